"""Checks of one LLaVA record and of one image file, each failure tagged with a problem kind.

The same functions serve the offline pre-flight (`python -m llava.train.check_data`) and the
training dataset (which applies the cheap record checks lazily when it reads a record), so a
record is judged the same way in both places. A failure raises `BadRecord(kind, message)`;
`kind` is one of `PROBLEM_KINDS`. Images in unusual modes are usable (they are converted to RGB)
and are reported as notices, not failures.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.train.preprocess import tokenize_conversation

MIN_IMAGE_SIDE = 2
MAX_ASPECT_RATIO = 50.0
PROBLEM_KINDS = {
    "json_syntax": "invalid JSON",
    "not_a_record": "the record is not a JSON object",
    "missing_field": "a required field is missing or has the wrong type",
    "role_order": "turns do not alternate human, gpt, ... starting with human",
    "empty_turn": "a turn has empty text",
    "placeholder_mismatch": f"the number of {DEFAULT_IMAGE_TOKEN} placeholders differs from the number of images",
    "non_utf8_text": "the text is not valid UTF-8",
    "missing_image": "an image file does not exist",
    "empty_image": "an image file has zero bytes",
    "unreadable_image": "an image file cannot be decoded (not an image, or truncated)",
    "extreme_image_size": "an image is degenerate (a side under 2 px, or aspect ratio over 50)",
    "decompression_bomb": "an image has more pixels than PIL allows (decompression-bomb sized)",
    "tokenization": "the chat template or tokenizer self-check rejects the conversation",
    "truncated_away": "nothing supervised is left after truncation to model_max_length",
}
NOTICE_KINDS = {
    "unusual_mode": "an image is not 8-bit RGB (RGBA, P, L, CMYK, 16-bit, ...); it is converted to RGB",
    "huge_image": "an image has more pixels than PIL's MAX_IMAGE_PIXELS (under twice that it still loads, slowly)",
}
ROLES = ("human", "gpt")


class BadRecord(ValueError):
    """A record that cannot be trained on; `kind` names the problem (a key of PROBLEM_KINDS)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def record_id(record, index: int) -> str:
    """The record's `id`, or `#index` when it has none."""
    if isinstance(record, dict) and record.get("id") is not None:
        return str(record["id"])
    return f"#{index}"


def record_image_paths(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def _has_surrogates(text: str) -> bool:
    """Bytes that were not UTF-8 decode (with errors='surrogateescape') to lone surrogates."""
    return any("\ud800" <= char <= "\udfff" for char in text)


def check_record(record) -> None:
    """The cheap structural checks of one record (no file access); raises BadRecord."""
    if not isinstance(record, dict):
        raise BadRecord("not_a_record", f"expected a JSON object, got {type(record).__name__}")
    image = record.get("image")
    if image is not None and not (isinstance(image, str) or (
            isinstance(image, list) and all(isinstance(path, str) for path in image))):
        raise BadRecord("missing_field", "'image' must be a file name or a list of file names")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRecord("missing_field", "'conversations' must be a non-empty list of {'from', 'value'} turns")
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise BadRecord("missing_field", f"turn {index} must be an object with string 'from' and 'value'")
        if _has_surrogates(turn["value"]) or _has_surrogates(turn["from"]):
            raise BadRecord("non_utf8_text", f"turn {index} holds bytes that are not UTF-8; re-encode the file as UTF-8")
    dialogue = turns[1:] if turns[0]["from"] == "system" else turns
    for index, turn in enumerate(dialogue):
        if turn["from"] != ROLES[index % 2]:
            raise BadRecord("role_order", f"turn {index} is from {turn['from']!r}, expected {ROLES[index % 2]!r}")
        if not turn["value"].strip():
            raise BadRecord("empty_turn", f"turn {index} (from {turn['from']!r}) is empty")
    if not dialogue or dialogue[-1]["from"] != "gpt":
        raise BadRecord("role_order", "the conversation must end with a gpt reply")
    placeholders = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in turns)
    paths = record_image_paths(record)
    if placeholders != len(paths):
        raise BadRecord(
            "placeholder_mismatch",
            f"{placeholders} '{DEFAULT_IMAGE_TOKEN}' placeholder(s) but {len(paths)} image(s); "
            f"put one '{DEFAULT_IMAGE_TOKEN}' in the human turns per image",
        )


def tokenize_record(record: dict, tokenizer, template: str):
    """(input_ids, labels) of a checked record; a conversation the template rejects is a BadRecord."""
    try:
        return tokenize_conversation(record["conversations"], tokenizer, template, bool(record_image_paths(record)))
    except ValueError as error:
        raise BadRecord("tokenization", str(error)) from error


def check_image_size(width: int, height: int, path: str) -> None:
    """Reject degenerate sizes that AnyRes cannot tile sensibly; raises BadRecord."""
    if min(width, height) < MIN_IMAGE_SIDE:
        raise BadRecord("extreme_image_size", f"{path} is {width}x{height} px")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise BadRecord("extreme_image_size", f"{path} is {width}x{height} px (aspect ratio over {MAX_ASPECT_RATIO:g})")


@dataclass
class ImageReport:
    width: int
    height: int
    mode: str
    huge: bool = False  # more pixels than PIL's MAX_IMAGE_PIXELS (a DecompressionBombWarning)

    @property
    def unusual_mode(self) -> bool:
        return self.mode != "RGB"


def check_image_file(path: str) -> ImageReport:
    """Open, verify and fully decode one image file (the exhaustive offline check); raises BadRecord."""
    if not os.path.isfile(path):
        raise BadRecord("missing_image", f"{path} does not exist")
    if os.path.getsize(path) == 0:
        raise BadRecord("empty_image", f"{path} has zero bytes")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()  # checks the structure; the file must be reopened to decode it
            with Image.open(path) as image:
                image.load()
                report = ImageReport(image.width, image.height, image.mode)
        # Over MAX_IMAGE_PIXELS but under twice that PIL only warns; training loads such images too.
        report.huge = any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
    except Image.DecompressionBombError as error:
        raise BadRecord("decompression_bomb", f"{path}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:  # PIL reports broken PNG chunks as SyntaxError
        raise BadRecord("unreadable_image", f"{path}: {error}") from error
    check_image_size(report.width, report.height, path)
    return report
