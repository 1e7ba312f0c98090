"""Conversation templates: how a dialogue becomes the text prompt the LLM reads.

Names and meanings follow LLaVA / LLaVA-NeXT (`SeparatorStyle`, `Conversation`, `conv_templates`,
`default_conversation`), so code written for LLaVA keeps working. A `Conversation` holds a system
prompt and a list of `[role, message]` pairs; `get_prompt()` renders them. A message may be a
string, a tuple whose first item is the text (LLaVA stores `(text, image, mode)` there), or `None`
for the turn the model is about to write: the prompt then ends with that role's header.

Every template renders through `get_prompt_segments()`, which also says which pieces of the prompt
the model is trained to produce: each assistant turn's text after its generation prompt (the reply,
plus the space before it in Vicuna's format) and the end-of-turn text that closes it.
Training builds its labels from those segments, so prompt format and label masking cannot drift
apart.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Any, NamedTuple


class SeparatorStyle(Enum):
    """How turns are delimited (LLaVA's names)."""

    TWO = auto()  # Vicuna v1: "SYSTEM USER: q ASSISTANT: a</s>"
    MPT = auto()  # ChatML with the newline inside the role: "<|im_start|>user\nq<|im_end|>"
    PLAIN = auto()  # stage-1 captioning: "<image>caption\n"
    CHATML = auto()  # Qwen: "<|im_start|>user\nq<|im_end|>\n"
    LLAMA_3 = auto()  # "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"


class PromptSegment(NamedTuple):
    """A piece of a rendered prompt; `is_target` marks text the model learns to produce."""

    text: str
    is_target: bool


CHATML_SYSTEM_HEADER = "<|im_start|>system\n"


def message_text(message: Any) -> str:
    """The text of a message: the string itself, or the first item of LLaVA's tuple form."""
    if isinstance(message, str):
        return message
    if isinstance(message, (tuple, list)) and message and isinstance(message[0], str):
        return message[0]
    raise ValueError(
        f"A conversation message must be a string or a tuple (text, image, ...), got {message!r}."
    )


def _llama3_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


@dataclasses.dataclass
class Conversation:
    """A dialogue plus the template that renders it (LLaVA's fields and methods)."""

    system: str
    roles: tuple[str, str]
    messages: list[list[Any]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.TWO
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"

    def append_message(self, role: str, message: Any) -> None:
        """Add a turn; `message=None` asks for a generation prompt for `role`."""
        self.messages.append([role, message])

    def set_system_message(self, text: str) -> None:
        """Replace the system prompt, keeping the ChatML system header where the template has one."""
        uses_header = self.sep_style in (SeparatorStyle.CHATML, SeparatorStyle.MPT)
        if uses_header and self.system.startswith(CHATML_SYSTEM_HEADER):
            self.system = CHATML_SYSTEM_HEADER + text
        else:
            self.system = text

    def get_prompt(self) -> str:
        """The full prompt text."""
        return "".join(segment.text for segment in self.get_prompt_segments())

    def get_prompt_segments(self) -> list[PromptSegment]:
        """The prompt as consecutive segments, with assistant replies marked as targets."""
        render = {
            SeparatorStyle.TWO: self._render_two,
            SeparatorStyle.MPT: self._render_mpt,
            SeparatorStyle.PLAIN: self._render_plain,
            SeparatorStyle.CHATML: self._render_chatml,
            SeparatorStyle.LLAMA_3: self._render_llama3,
        }.get(self.sep_style)
        if render is None:
            raise ValueError(f"Unsupported separator style {self.sep_style!r}.")
        segments = render()
        return [segment for segment in segments if segment.text]

    def _turns(self):
        """Yield (role, text or None, is_assistant) per message; the odd turns are the assistant's."""
        for index, (role, message) in enumerate(self.messages):
            text = message_text(message) if message else None
            yield role, text, index % 2 == 1

    def _render_two(self) -> list[PromptSegment]:
        segments = [PromptSegment(self.system + self.sep, False)]
        for role, text, is_assistant in self._turns():
            if text is None:
                segments.append(PromptSegment(role + ":", False))
            elif is_assistant:  # the generation prompt ends at "ROLE:", so the space is generated
                segments += [
                    PromptSegment(role + ":", False),
                    PromptSegment(" " + text + (self.sep2 or ""), True),
                ]
            else:
                segments.append(PromptSegment(role + ": " + text + self.sep, False))
        return segments

    def _render_mpt(self) -> list[PromptSegment]:
        segments = [PromptSegment(self.system + self.sep, False)]
        for role, text, is_assistant in self._turns():
            if text is None:
                segments.append(PromptSegment(role, False))
            else:
                segments += [PromptSegment(role, False), PromptSegment(text + self.sep, is_assistant)]
        return segments

    def _render_chatml(self) -> list[PromptSegment]:
        segments = [PromptSegment(self.system + self.sep + "\n" if self.system else "", False)]
        for role, text, is_assistant in self._turns():
            if text is None:
                segments.append(PromptSegment(role + "\n", False))
            else:
                segments += [
                    PromptSegment(role + "\n", False),
                    PromptSegment(text + self.sep, is_assistant),
                    PromptSegment("\n", False),
                ]
        return segments

    def _render_llama3(self) -> list[PromptSegment]:
        segments = []
        if self.system:
            segments.append(PromptSegment(_llama3_header("system") + self.system + self.sep, False))
        for role, text, is_assistant in self._turns():
            segments.append(PromptSegment(_llama3_header(role), False))
            if text is not None:
                segments.append(PromptSegment(text + self.sep, is_assistant))
        return segments

    def _render_plain(self) -> list[PromptSegment]:
        # Stage-1 captioning, as LLaVA trains it: the user turn (just the image placeholder) is
        # followed by `sep2` (nothing by default), the caption by `sep`.
        segments = [PromptSegment(self.system, False)]
        for _, text, is_assistant in self._turns():
            if text is None:
                continue
            if is_assistant:
                segments.append(PromptSegment(text + self.sep, True))
            else:
                segments.append(PromptSegment(text + (self.sep2 or ""), False))
        return segments

    def copy(self) -> Conversation:
        """A copy whose message list can be changed without touching this one."""
        return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages])

    def dict(self) -> dict[str, Any]:
        """A JSON-friendly view (LLaVA's keys); tuple messages are reduced to their text."""
        messages = [
            [role, message_text(msg) if isinstance(msg, tuple) else msg] for role, msg in self.messages
        ]
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


conv_vicuna_v1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    version="v1",
)

conv_llava_v1 = dataclasses.replace(
    conv_vicuna_v1,
    system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    messages=[],
)

conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
    version="plain",
)

# Llama 3's chat format. The prompt text starts at the first header: the tokenizer adds the BOS
# (`<|begin_of_text|>` for Llama 3), as for every other template, so it is never doubled.
conv_llava_llama_3 = Conversation(
    system="You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.",
    roles=("user", "assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.LLAMA_3,
    sep="<|eot_id|>",
    version="llama_v3",
)

conv_qwen = Conversation(
    system=CHATML_SYSTEM_HEADER + "You are a helpful assistant.",
    roles=("<|im_start|>user", "<|im_start|>assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.CHATML,
    sep="<|im_end|>",
    version="qwen",
)

conv_chatml_direct = Conversation(
    system=CHATML_SYSTEM_HEADER + "Answer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
)

conv_templates: dict[str, Conversation] = {
    "plain": conv_llava_plain,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_llava_v1,
    "llava_llama_3": conv_llava_llama_3,
    "qwen_1_5": conv_qwen,
    "qwen_2": conv_qwen,
    "chatml_direct": conv_chatml_direct,
}

default_conversation = conv_templates["vicuna_v1"]


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template called `name`; unknown names raise ValueError."""
    if name not in conv_templates:
        known = ", ".join(sorted(conv_templates))
        raise ValueError(f"Unknown conversation template {name!r}. Known templates: {known}.")
    return conv_templates[name].copy()
