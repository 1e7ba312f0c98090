"""Turn one LLaVA record's conversation into training `input_ids` and `labels`.

A record's `conversations` is a list of `{"from": "human" | "gpt", "value": text}` turns (an
optional leading `"system"` turn replaces the template's system prompt). The chat template renders
them as segments that say which text is an assistant target (`Conversation.get_prompt_segments`).
The prompt is split at `<image>` and each chunk tokenized once with character offsets, exactly as
`tokenizer_image_token` does; a token is supervised when its characters touch a target segment.

Then a self-check: the ids must equal `tokenizer_image_token(prompt)` and the supervised tokens
must decode to the assistant replies (ignoring whitespace). A record that fails raises ValueError
instead of training on wrong targets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, PromptSegment, SeparatorStyle, get_conv_template
from llava.mm_utils import chunks_start_with_bos, join_image_chunks, tokenizer_image_token

HUMAN, GPT, SYSTEM = "human", "gpt", "system"


def _split_system(conversations: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[tuple[str, str]]]:
    """(system prompt or None, [(from, value), ...]) after checking each entry's shape."""
    if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence):
        raise ValueError(
            f"conversations must be a list of {{'from', 'value'}} dicts, got {type(conversations).__name__}."
        )
    turns = []
    for index, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise ValueError(f"Turn {index} must be a dict with 'from' and a string 'value', got {turn!r}.")
        turns.append((turn["from"], turn["value"]))
    if turns and turns[0][0] == SYSTEM:
        return turns[0][1], turns[1:]
    return None, turns


def _check_turns(turns: list[tuple[str, str]]) -> None:
    """Roles alternate human, gpt, ... starting with human and ending with a non-empty gpt reply."""
    if not turns:
        raise ValueError("The conversation has no human/gpt turns.")
    for index, (source, value) in enumerate(turns):
        expected = HUMAN if index % 2 == 0 else GPT
        if source != expected:
            raise ValueError(
                f"Turn {index} is from {source!r} where {expected!r} was expected: turns must alternate "
                f"'human', 'gpt', ... starting with 'human' (an optional 'system' turn may come first)."
            )
        if not value.strip():
            raise ValueError(f"Turn {index} (from {source!r}) is empty.")
        if source == GPT and DEFAULT_IMAGE_TOKEN in value:
            raise ValueError(
                f"Turn {index} is a gpt reply containing {DEFAULT_IMAGE_TOKEN!r}; images go in human turns."
            )
    if len(turns) % 2:
        raise ValueError("The conversation ends with a human turn; it must end with a gpt reply.")


def _check_image_placeholders(turns: list[tuple[str, str]], has_image: bool) -> int:
    """The number of `<image>` placeholders, which must be > 0 exactly when the record has images."""
    count = sum(value.count(DEFAULT_IMAGE_TOKEN) for _, value in turns)
    if has_image and count == 0:
        raise ValueError(
            f"The record has an image but no {DEFAULT_IMAGE_TOKEN!r} placeholder in its text; "
            f"put {DEFAULT_IMAGE_TOKEN + chr(10)!r} at the start of the first human turn."
        )
    if not has_image and count:
        raise ValueError(
            f"The record has no image but its text contains {count} {DEFAULT_IMAGE_TOKEN!r} placeholder(s)."
        )
    return count


def build_conversation(
    conversations: Sequence[Mapping[str, Any]], template_name: str, has_image: bool
) -> Conversation:
    """The record's turns in the template `template_name`, after validating them.

    For the `plain` template (stage-1 captioning) the record is one human/gpt pair and, as in
    LLaVA, the human turn is replaced by its image placeholder(s) alone.
    """
    conversation = get_conv_template(template_name)
    system, turns = _split_system(conversations)
    _check_turns(turns)
    image_count = _check_image_placeholders(turns, has_image)
    if conversation.sep_style is SeparatorStyle.PLAIN:
        if len(turns) != 2 or not image_count:
            raise ValueError(
                f"The 'plain' template takes one image with its caption (a human turn with "
                f"{DEFAULT_IMAGE_TOKEN!r} and a gpt turn); got {len(turns)} turns and {image_count} images."
            )
        turns = [(HUMAN, DEFAULT_IMAGE_TOKEN * image_count), turns[1]]
    if "<think>" in conversation.reply_prefix:
        thinking = [index for index, (_, value) in enumerate(turns) if index % 2 and "think>" in value]
        if thinking:
            raise ValueError(
                f"Turn {thinking[0]} is a gpt reply with a <think> block, but the {template_name!r} template "
                f"trains the non-thinking format (every reply follows an empty thinking block)."
            )
    if system is not None:
        conversation.set_system_message(system)
    for index, (_, value) in enumerate(turns):
        conversation.append_message(conversation.roles[index % 2], value)
    return conversation


def _target_mask(segments: list[PromptSegment]) -> bytearray:
    """One byte per prompt character: 1 inside target segments."""
    mask = bytearray()
    for segment in segments:
        mask += (b"\x01" if segment.is_target else b"\x00") * len(segment.text)
    return mask


def _tokenize_segments(segments: list[PromptSegment], tokenizer: Any) -> tuple[list[int], list[int]]:
    """input_ids and labels of the rendered prompt, split at `<image>` like tokenizer_image_token."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenize_conversation needs a fast tokenizer (it uses offset mappings).")
    prompt = "".join(segment.text for segment in segments)
    mask = _target_mask(segments)
    chunk_ids, chunk_labels, chunk_start = [], [], 0
    for chunk in prompt.split(DEFAULT_IMAGE_TOKEN):
        encoding = tokenizer(chunk, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        labels = [
            token if end > begin and any(mask[chunk_start + begin : chunk_start + end]) else IGNORE_INDEX
            for token, (begin, end) in zip(ids, encoding["offset_mapping"])
        ]
        chunk_ids.append(ids)
        chunk_labels.append(labels)
        chunk_start += len(chunk) + len(DEFAULT_IMAGE_TOKEN)
    starts_with_bos = chunks_start_with_bos(chunk_ids, tokenizer.bos_token_id)
    input_ids = join_image_chunks(chunk_ids, IMAGE_TOKEN_INDEX, starts_with_bos)
    labels = join_image_chunks(chunk_labels, IGNORE_INDEX, starts_with_bos)
    return input_ids, labels


def _without_whitespace(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _check_targets(
    segments: list[PromptSegment], input_ids: list[int], labels: list[int], tokenizer: Any
) -> None:
    """Raise ValueError unless ids match tokenizer_image_token and targets decode to the replies."""
    prompt = "".join(segment.text for segment in segments)
    if input_ids != tokenizer_image_token(prompt, tokenizer):
        raise ValueError(
            f"Tokenizing with offsets disagrees with tokenizer_image_token for the prompt {prompt!r}."
        )
    supervised = [label for label in labels if label != IGNORE_INDEX]
    decoded = tokenizer.decode(supervised, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    expected = "".join(segment.text for segment in segments if segment.is_target)
    if _without_whitespace(decoded) != _without_whitespace(expected):
        raise ValueError(
            f"The supervised tokens decode to {decoded!r} but the assistant replies are {expected!r} "
            f"(token boundaries cross the reply edges) in the prompt {prompt!r}."
        )


def tokenize_conversation(
    conversations: Sequence[Mapping[str, Any]], tokenizer: Any, template_name: str, has_image: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), LongTensors [T]: images are IMAGE_TOKEN_INDEX, non-targets IGNORE_INDEX.

    Only assistant replies and the end-of-turn text closing them (`</s>`, `<|eot_id|>`,
    `<|im_end|>`, `<|end|>`; the caption and its newline for `plain`) carry labels; a template's
    reply prefix (Qwen3's empty `<think>` block) is prompt, not target.
    """
    segments = build_conversation(conversations, template_name, has_image).get_prompt_segments()
    input_ids, labels = _tokenize_segments(segments, tokenizer)
    _check_targets(segments, input_ids, labels, tokenizer)
    return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
