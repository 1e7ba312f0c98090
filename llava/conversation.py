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

`default_template_for_model` / `template_for_model` pick the template an LLM family was tuned with
from its config's `model_type` and its tokenizer files (never from a path); `python -m
llava.conversation --model PATH` prints that name (the launch scripts use it for stage 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Mapping
from enum import Enum, auto
from pathlib import Path
from typing import Any, NamedTuple


class SeparatorStyle(Enum):
    """How turns are delimited (LLaVA's names)."""

    TWO = auto()  # Vicuna v1: "SYSTEM USER: q ASSISTANT: a</s>"
    MPT = auto()  # ChatML with the newline inside the role: "<|im_start|>user\nq<|im_end|>"
    PLAIN = auto()  # stage-1 captioning: "<image>caption\n"
    CHATML = auto()  # Qwen: "<|im_start|>user\nq<|im_end|>\n"
    LLAMA_3 = auto()  # "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
    MISTRAL = auto()  # Mistral Instruct: "[INST] q [/INST] a</s>"


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
    # The text that opens the system prompt (kept by `set_system_message`), e.g. ChatML's
    # "<|im_start|>system\n"; "" when the template renders the system prompt as it is.
    system_header: str = ""
    # Text that opens every assistant turn right after its role header (CHATML style only): part
    # of the generation prompt, never a target. Qwen3 puts its empty thinking block here.
    reply_prefix: str = ""

    def append_message(self, role: str, message: Any) -> None:
        """Add a turn; `message=None` asks for a generation prompt for `role`."""
        self.messages.append([role, message])

    def set_system_message(self, text: str) -> None:
        """Replace the system prompt, keeping the template's system header (ChatML's, Phi-3's)."""
        header = self.system_header
        uses_chatml = self.sep_style in (SeparatorStyle.CHATML, SeparatorStyle.MPT)
        if not header and uses_chatml and self.system.startswith(CHATML_SYSTEM_HEADER):
            header = CHATML_SYSTEM_HEADER  # a ChatML conversation built elsewhere, LLaVA's way
        self.system = header + text if header and not text.startswith(header) else text

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
            SeparatorStyle.MISTRAL: self._render_mistral,
        }.get(self.sep_style)
        if render is None:
            raise ValueError(f"Unsupported separator style {self.sep_style!r}.")
        if self.reply_prefix and self.sep_style is not SeparatorStyle.CHATML:
            raise ValueError(f"reply_prefix is only supported by the CHATML style, not {self.sep_style!r}.")
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
            header = role + "\n" + (self.reply_prefix if is_assistant else "")
            if text is None:
                segments.append(PromptSegment(header, False))
            else:
                segments += [
                    PromptSegment(header, False),
                    PromptSegment(text + self.sep, is_assistant),
                    PromptSegment("\n", False),
                ]
        return segments

    def _render_mistral(self) -> list[PromptSegment]:
        # "[INST] q [/INST]" is the generation prompt; the model writes " a</s>" (the space becomes
        # the reply's first token's word marker, as after Vicuna's "ASSISTANT:"). A system prompt
        # opens the first user message, separated by a blank line (Mistral has no system role).
        segments = []
        for index, (_, text, is_assistant) in enumerate(self._turns()):
            if is_assistant:
                if text is not None:
                    segments.append(PromptSegment(" " + text + self.sep, True))
            elif text is not None:
                content = self.system + "\n\n" + text if index == 0 and self.system else text
                segments.append(PromptSegment("[INST] " + content + " [/INST]", False))
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

# Qwen 1.5 / 2 / 2.5 (LLaVA-NeXT's `conv_qwen`): ChatML with Qwen2's default system prompt. Qwen's
# tokenizers add no BOS, so the rendered prompt is the whole input.
conv_qwen = Conversation(
    system=CHATML_SYSTEM_HEADER + "You are a helpful assistant.",
    roles=("<|im_start|>user", "<|im_start|>assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.CHATML,
    sep="<|im_end|>",
    version="qwen",
    system_header=CHATML_SYSTEM_HEADER,
)

# Qwen3's non-thinking format. Qwen3's chat template (the hybrid-thinking models) has no default
# system prompt and, with `enable_thinking=False`, ends the generation prompt with an empty
# thinking block. Here every assistant turn opens with that block as prompt text, never as a target:
# the model is not trained to write "<think>" and at inference starts after "</think>\n\n", i.e. in
# non-thinking mode. (Qwen3's own template drops the block from the earlier assistant turns of a
# multi-turn chat; keeping it on every turn means each supervised reply follows exactly the prompt
# that the chat CLI, which re-renders the history with this template, generates it from.)
QWEN3_EMPTY_THINK = "<think>\n\n</think>\n\n"
conv_qwen3 = Conversation(
    system="",
    roles=("<|im_start|>user", "<|im_start|>assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.CHATML,
    sep="<|im_end|>",
    version="qwen3",
    system_header=CHATML_SYSTEM_HEADER,
    reply_prefix=QWEN3_EMPTY_THINK,
)

# Phi-3 / Phi-3.5 instruct (LLaVA-NeXT's `conv_phi3_instruct`): ChatML's layout with Phi-3's
# markers, "<|user|>\nq<|end|>\n<|assistant|>\na<|end|>\n". Phi-3's EOS is <|endoftext|>, so
# generation stops at "<|end|>".
PHI3_SYSTEM_HEADER = "<|system|>\n"
conv_phi3_instruct = Conversation(
    system=PHI3_SYSTEM_HEADER + "You are a helpful AI assistant.",
    roles=("<|user|>", "<|assistant|>"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.CHATML,
    sep="<|end|>",
    version="phi3",
    system_header=PHI3_SYSTEM_HEADER,
)

# Mistral Instruct (v0.1-v0.3, as LLaVA-1.6-Mistral): "[INST] q1 [/INST] a1</s>[INST] q2 [/INST]".
# No default system prompt (LLaVA-NeXT's `conv_mistral_instruct` has none either); a record's
# system turn opens the first [INST] block. Unlike LLaVA-NeXT's rendering (" a1 </s>"), there is no
# space before </s>: Mistral's own format, and no stray word-marker token trained before EOS.
conv_mistral_instruct = Conversation(
    system="",
    roles=("USER", "ASSISTANT"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.MISTRAL,
    sep="</s>",
    version="mistral",
)

# InternLM2 / InternLM2.5 chat: ChatML with InternLM2's own system prompt (its `meta_instruction`).
# The tokenizer adds BOS <s>; generation stops at "<|im_end|>" (the EOS is </s>).
INTERNLM2_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the "
    "user such as English and 中文."
)
conv_internlm2 = Conversation(
    system=CHATML_SYSTEM_HEADER + INTERNLM2_SYSTEM,
    roles=("<|im_start|>user", "<|im_start|>assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.CHATML,
    sep="<|im_end|>",
    version="internlm2",
    system_header=CHATML_SYSTEM_HEADER,
)

conv_chatml_direct = Conversation(
    system=CHATML_SYSTEM_HEADER + "Answer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
    system_header=CHATML_SYSTEM_HEADER,
)

conv_templates: dict[str, Conversation] = {
    "plain": conv_llava_plain,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_llava_v1,
    "llava_llama_3": conv_llava_llama_3,
    "qwen_1_5": conv_qwen,
    "qwen_2": conv_qwen,
    "qwen3": conv_qwen3,
    "phi3_instruct": conv_phi3_instruct,
    "mistral_instruct": conv_mistral_instruct,
    "internlm2": conv_internlm2,
    "chatml_direct": conv_chatml_direct,
}

default_conversation = conv_templates["vicuna_v1"]


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template called `name`; unknown names raise ValueError."""
    if name not in conv_templates:
        known = ", ".join(sorted(conv_templates))
        raise ValueError(f"Unknown conversation template {name!r}. Known templates: {known}.")
    return conv_templates[name].copy()


# ----------------------------------------------------------------------------- template from the model
# The family comes from config.json's `model_type`; where one architecture serves several chat
# formats, the tokenizer decides by what it *is* (its BOS, its added tokens, its chat template),
# never by the model's path. The tiny default's tokenizer carries every template's special tokens,
# so mere presence of a marker is not enough: Llama 3 is told by its BOS <|begin_of_text|> plus its
# header tokens; InternLM2 converted to Llama layout (llava.tools.convert_internlm2 copies its
# tokenizer files unchanged) by its tokenizer class InternLM2Tokenizer, or by its tool-use tokens
# (<|action_start|>, <|interpreter|>, ...) next to <|im_start|>.

LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
INTERNLM2_TOKENS = ("<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>",
                    "<|plugin|>")
PHI3_TOKENS = ("<|user|>", "<|assistant|>", "<|end|>")
TEMPLATE_FIX = (
    "pass the template yourself: PROMPT_VERSION=NAME for the launch scripts, --version NAME for "
    "llava/train/train.py, --conv-mode NAME for the chat CLI"
)
# config.json plus the files that describe the tokenizer (all small; no weights).
MODEL_DESCRIPTION_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
                           "added_tokens.json", "chat_template.jinja", "chat_template.json")


@dataclasses.dataclass(frozen=True)
class TokenizerFacts:
    """What a tokenizer says about its chat format: its added and special tokens (not the learned
    vocabulary), BOS and EOS, its chat template ("" when it has none) and its class name."""

    tokens: frozenset[str] = frozenset()
    bos_token: str | None = None
    eos_token: str | None = None
    chat_template: str = ""
    tokenizer_class: str = ""

    def has(self, *tokens: str) -> bool:
        return all(token in self.tokens for token in tokens)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenizerFacts:
        """The facts of a loaded transformers tokenizer."""
        template = getattr(tokenizer, "chat_template", None) or ""
        if isinstance(template, Mapping):
            template = "\n".join(str(text) for text in template.values())
        tokens = set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens)
        return cls(frozenset(tokens), tokenizer.bos_token, tokenizer.eos_token, str(template),
                   type(tokenizer).__name__)


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer files store it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}") from error


def _chat_template_texts(folder: Path, tokenizer_config: Mapping[str, Any]) -> Iterable[str]:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str):
        yield template
    elif isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        yield from (entry["template"] for entry in template if isinstance(entry, Mapping)
                    and isinstance(entry.get("template"), str))
    if (folder / "chat_template.jinja").is_file():
        yield (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        stored = _read_json(folder / "chat_template.json")
        if isinstance(stored, Mapping) and isinstance(stored.get("chat_template"), str):
            yield stored["chat_template"]


def read_tokenizer_facts(folder: str | os.PathLike) -> TokenizerFacts | None:
    """The `TokenizerFacts` of the tokenizer saved in `folder`, from its JSON files alone (no
    tokenizer code runs); None when the folder holds no tokenizer_config.json nor tokenizer.json."""
    folder = Path(folder)
    config_path, backend_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not config_path.is_file() and not backend_path.is_file():
        return None
    config = _read_json(config_path) if config_path.is_file() else {}
    special_map_path = folder / "special_tokens_map.json"
    special_map = _read_json(special_map_path) if special_map_path.is_file() else {}
    tokens: set[str] = set()
    for entry in (config.get("added_tokens_decoder") or {}).values():
        tokens.add(_token_text(entry))
    if backend_path.is_file():
        tokens.update(_token_text(entry) for entry in _read_json(backend_path).get("added_tokens") or ())
    if (folder / "added_tokens.json").is_file():  # {token: id}, next to a sentencepiece tokenizer.model
        tokens.update(_read_json(folder / "added_tokens.json"))
    named = {}
    for source in (special_map, config):  # tokenizer_config.json wins
        for key, value in source.items():
            if key.endswith("_token") and _token_text(value):
                named[key] = _token_text(value)
            elif key in ("additional_special_tokens", "extra_special_tokens") and isinstance(value, list):
                tokens.update(_token_text(item) for item in value)
    tokens.update(named.values())
    tokens.discard(None)
    chat_template = "\n".join(_chat_template_texts(folder, config))
    tokenizer_class = config.get("tokenizer_class") if isinstance(config.get("tokenizer_class"), str) else ""
    return TokenizerFacts(frozenset(tokens), named.get("bos_token"), named.get("eos_token"), chat_template,
                          tokenizer_class)


def _chat_format_of(facts: TokenizerFacts) -> str:
    """A short description of the chat format a tokenizer's own template or EOS points to."""
    template = facts.chat_template
    if "[INST]" in template:
        return "an [INST] chat format (Llama 2 chat / Mistral): try mistral_instruct"
    if "<|im_start|>" in template or facts.eos_token == "<|im_end|>":
        return "ChatML: try chatml_direct (LLaVA-NeXT's choice for Yi-34B) or qwen_1_5"
    if "<|user|>" in template:
        return "a <|user|> / <|assistant|> chat format (Zephyr, Phi): try phi3_instruct"
    return "a chat format of its own"


def _unclear(family: str, facts: TokenizerFacts, why: str) -> ValueError:
    return ValueError(f"Cannot tell the conversation template of this {family} model: {why}; its tokenizer "
                      f"points to {_chat_format_of(facts)}. To choose, {TEMPLATE_FIX}.")


def _llama_template(facts: TokenizerFacts) -> tuple[str, str]:
    if facts.bos_token == "<|begin_of_text|>" and facts.has(*LLAMA3_TOKENS):
        return "llava_llama_3", "Llama 3 tokenizer: BOS <|begin_of_text|> and the header tokens"
    if facts.tokenizer_class.startswith("InternLM2Tokenizer") or facts.has(*INTERNLM2_TOKENS):
        return "internlm2", ("InternLM2 in Llama layout: InternLM2's tokenizer (its class, or <|im_start|> "
                             "with its tool tokens)")
    vicuna_like = "USER" in facts.chat_template and "ASSISTANT" in facts.chat_template
    if (facts.chat_template and not vicuna_like) or facts.eos_token == "<|im_end|>":
        raise _unclear("Llama-architecture", facts, "it is a chat model whose format is not Vicuna's")
    return "v1", "Llama tokenizer without a chat format of its own: Vicuna v1 (LLaVA-1.5, the paper's)"


def _qwen2_template(facts: TokenizerFacts) -> tuple[str, str]:
    if facts.chat_template and "<|im_start|>" not in facts.chat_template:
        raise _unclear("qwen2-architecture", facts, "its chat template is not ChatML (e.g. a DeepSeek-R1 "
                       "distillation)")
    return "qwen_1_5", "Qwen 1.5 / 2 / 2.5: ChatML"


def _qwen3_template(facts: TokenizerFacts) -> tuple[str, str]:
    if facts.chat_template and "enable_thinking" not in facts.chat_template:
        raise _unclear("Qwen3", facts, "its chat template has no enable_thinking switch (not the hybrid-"
                       "thinking Qwen3, e.g. a 2507 Instruct or Thinking model); qwen_1_5 is plain ChatML")
    return "qwen3", "Qwen3: ChatML, non-thinking (empty <think> block in the prompt)"


def _phi3_template(facts: TokenizerFacts) -> tuple[str, str]:
    if facts.tokens and not (facts.bos_token == "<s>" and facts.has(*PHI3_TOKENS)):
        raise _unclear("phi3-architecture", facts, "its tokenizer is not Phi-3's (BOS <s> with <|user|>, "
                       "<|assistant|>, <|end|>); Phi-4 models use other formats")
    return "phi3_instruct", "Phi-3 / Phi-3.5: <|user|> / <|assistant|> / <|end|>"


def _mistral_template(facts: TokenizerFacts) -> tuple[str, str]:
    if (facts.chat_template and "[INST]" not in facts.chat_template) or facts.eos_token == "<|im_end|>":
        raise _unclear("Mistral-architecture", facts, "it is a chat model whose format is not [INST]")
    return "mistral_instruct", "Mistral / Mixtral: [INST] ... [/INST]"


def _internlm2_template(facts: TokenizerFacts) -> tuple[str, str]:
    return "internlm2", "InternLM2: ChatML with InternLM2's system prompt"


_TEMPLATE_BY_FAMILY = {
    "llama": _llama_template,
    "qwen2": _qwen2_template,
    "qwen3": _qwen3_template,
    "phi3": _phi3_template,
    "mistral": _mistral_template,
    "internlm2": _internlm2_template,
}
_FAMILY_ALIASES = {"qwen": "qwen2", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3", "mixtral": "mistral"}
# LLaVA checkpoints' stems (LLaVA-NeXT's and the ProxyV release's llava_qwen, llava_phi, ...). Only
# there does "phi" mean Phi-3: a plain model_type "phi" is Phi-1 / Phi-2.
_LLAVA_STEMS = {"phi": "phi3"}


def _family(model_type: str) -> str:
    """The LLM family of a model_type; LLaVA checkpoints (llava_llama, llava_proxyv_qwen3,
    llava_phi, ...) count as their language model's family."""
    for prefix in ("llava_proxyv_", "llava_"):
        if model_type.startswith(prefix):
            stem = model_type[len(prefix) :]
            return _FAMILY_ALIASES.get(stem, _LLAVA_STEMS.get(stem, stem))
    return _FAMILY_ALIASES.get(model_type, model_type)


def explain_default_template(model_type: str, tokenizer: TokenizerFacts | None = None) -> tuple[str, str]:
    """(template name, why): see `default_template_for_model`."""
    choose = _TEMPLATE_BY_FAMILY.get(_family(str(model_type)))
    if choose is None:
        families = ", ".join(sorted({*_TEMPLATE_BY_FAMILY, *_FAMILY_ALIASES}))
        raise ValueError(f"No default conversation template for model_type {model_type!r} (known families: "
                         f"{families}); {TEMPLATE_FIX}. Known templates: {', '.join(sorted(conv_templates))}.")
    return choose(tokenizer if tokenizer is not None else TokenizerFacts())


def default_template_for_model(model_type: str, tokenizer: TokenizerFacts | None = None) -> str:
    """The conversation template (a `conv_templates` name, i.e. a `--version`) an LLM family uses.

    llama -> v1 (Vicuna), or llava_llama_3 for a Llama 3 tokenizer, or internlm2 for an InternLM2
    tokenizer converted to Llama layout; qwen2 -> qwen_1_5; qwen3 -> qwen3; phi3 -> phi3_instruct;
    mistral / mixtral -> mistral_instruct; internlm2 -> internlm2. `tokenizer` (see
    `TokenizerFacts`, `read_tokenizer_facts`) refines the choice and refuses a tokenizer whose own
    chat format contradicts the family's; without it the family's default is returned. An unknown
    family, or a tokenizer that leaves the format unclear, raises ValueError naming the fix
    (`--version` / `PROMPT_VERSION`).
    """
    return explain_default_template(model_type, tokenizer)[0]


def _local_model_folder(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A folder holding the model's config.json and tokenizer files: `name_or_path` itself, or for a
    hub name its snapshot in the Hugging Face cache (if not cached yet, only the small description
    files are downloaded; HF_HUB_OFFLINE=1 forbids that)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    parts = str(name_or_path).split("/")
    if path.exists() or len(parts) > 2 or not all(parts):
        raise ValueError(f"{name_or_path!r} is not a model folder (nor a hub name like org/model).")
    from huggingface_hub import snapshot_download  # only for hub names

    options = {"allow_patterns": list(MODEL_DESCRIPTION_FILES), "cache_dir": cache_dir}
    cached = None
    try:
        cached = Path(snapshot_download(str(name_or_path), local_files_only=True, **options))
        if (cached / "config.json").is_file() and read_tokenizer_facts(cached) is not None:
            return cached
    except Exception:  # not cached (any hub error): try the hub next
        pass
    try:
        return Path(snapshot_download(str(name_or_path), **options))
    except Exception as error:  # offline, unknown repo, no network, ...
        if cached is not None:
            return cached
        raise ValueError(f"{name_or_path!r} is not a local folder, not in the Hugging Face cache, and its "
                         f"config could not be downloaded ({type(error).__name__}: {error}). Download the "
                         f"model first, or {TEMPLATE_FIX}.") from error


def explain_template_for_model(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(template name, why) for a model folder or hub name: see `template_for_model`."""
    folder = _local_model_folder(name_or_path, cache_dir)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json; {TEMPLATE_FIX}.")
    config = _read_json(folder / "config.json")
    if not isinstance(config, Mapping):
        raise ValueError(f"{folder / 'config.json'} is not a JSON object.")
    saved = config.get("conv_template")
    if saved and saved != "plain":  # a LLaVA checkpoint names its template; stage 1's plain is no chat format
        get_conv_template(saved)  # unknown names: ValueError listing the known ones
        return saved, "the checkpoint's conv_template"
    if not config.get("model_type"):
        raise ValueError(f"{folder / 'config.json'} has no model_type; {TEMPLATE_FIX}.")
    facts = read_tokenizer_facts(folder)
    if facts is None:
        raise ValueError(f"{folder} has no tokenizer files (tokenizer_config.json / tokenizer.json); {TEMPLATE_FIX}.")
    name, why = explain_default_template(config["model_type"], facts)
    return name, f"model_type {config['model_type']}; {why}"


def template_for_model(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The conversation template for a model folder or hub name, from its config.json and tokenizer
    files only (no weights, no tokenizer code): the checkpoint's `conv_template` when it names a chat
    template, else `default_template_for_model(model_type, its tokenizer's facts)`."""
    return explain_template_for_model(name_or_path, cache_dir)[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m llava.conversation --model PATH`: print the model's template name on stdout.

    A `--model` that is not there (nor a hub name) or is a file is a `UsageError` (exit status 2);
    a model folder whose files do not tell its template a `DamagedInputError` (1); run it through
    `llava.errors.run_main`, which prints either as one `error: ...` line.
    """
    from llava.errors import DamagedInputError, UsageError, one_line

    parser = argparse.ArgumentParser(
        prog="python -m llava.conversation",
        description="Print the conversation template (--version) for a language model, chosen from its "
        "config.json model_type and tokenizer files (no weights are read).",
    )
    parser.add_argument("--model", required=True, help="model folder or hub name (org/model)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    model = os.path.expanduser(args.model)
    if os.path.exists(model) and not os.path.isdir(model):
        raise UsageError(f"--model {args.model} is a file; give the model's folder (with config.json) or a hub name.")
    if os.path.isdir(model) and not os.path.exists(os.path.join(model, "config.json")):
        raise UsageError(f"--model {args.model} has no config.json: it is not a model folder; give the language "
                         "model's folder or a hub name.")
    try:
        name, why = explain_template_for_model(args.model)
    except ValueError as error:
        if not os.path.isdir(model):  # not a folder here, nor in the hub cache
            raise UsageError(f"--model: {one_line(error)}") from error
        raise DamagedInputError(f"--model {args.model}: {one_line(error)}") from error
    print(name)
    print(f"Conversation template for {args.model}: {name} ({why}).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from llava.errors import run_main

    sys.exit(run_main(main))
