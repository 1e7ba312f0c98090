"""A generated corpus of broken LLaVA data: one record (or file line) per kind of bad input.

`write_broken_corpus(root)` writes `images/`, `records.json` (a list), `records.jsonl` (with a
JSON syntax error and a non-UTF-8 line) and `broken.json` (a whole file that is not JSON), and
returns `BrokenCorpus`, whose `expected_problems` / `expected_notices` say, kind by kind, which
ids (or file lines) a correct checker must report. Images are a few pixels each; the
decompression bomb is a hand-written PNG header that claims 30000x30000 pixels (PIL refuses it
at open time, so nothing big is ever allocated).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def _chat(question: str, answer: str = "A red square.") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int = 30000) -> None:
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0"))
                     + _png_chunk(b"IEND", b""))


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8), "RGB")
    rgb.save(folder / "good.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80).save(folder / "gray16.png")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "one_pixel.png")
    Image.new("RGB", (600, 3), (0, 255, 0)).save(folder / "very_wide.png")
    (folder / "zero_bytes.png").write_bytes(b"")
    (folder / "not_an_image.png").write_text("this is text, not a PNG")
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    _bomb_png(folder / "bomb.png")


def _records() -> list[dict]:
    good = "<image>\nWhat is this?"
    long_question = "<image>\n" + " ".join(["describe the shapes and the colors"] * 60)
    return [
        {"id": "ok_text", "conversations": _chat("Hello there?", "Hi.")},
        {"id": "ok_image", "image": "good.png", "conversations": _chat(good)},
        {"id": "mode_rgba", "image": "rgba.png", "conversations": _chat(good)},
        {"id": "mode_p", "image": "palette.png", "conversations": _chat(good)},
        {"id": "mode_l", "image": "gray.png", "conversations": _chat(good)},
        {"id": "mode_cmyk", "image": "cmyk.jpg", "conversations": _chat(good)},
        {"id": "mode_16bit", "image": "gray16.png", "conversations": _chat(good)},
        {"id": "no_conversations", "image": "good.png"},
        {"id": "turn_without_value", "conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
        {"id": "gpt_first", "conversations": [{"from": "gpt", "value": "Hi."}, {"from": "human", "value": "Hm?"}]},
        {"id": "ends_with_human", "conversations": [{"from": "human", "value": "Hello?"}]},
        {"id": "empty_answer", "conversations": _chat("Hello?", "   ")},
        {"id": "placeholder_without_image", "conversations": _chat(good)},
        {"id": "image_without_placeholder", "image": "good.png", "conversations": _chat("What is this?")},
        {"id": "two_images_one_placeholder", "image": ["good.png", "good.png"], "conversations": _chat(good)},
        {"id": "missing_file", "image": "nowhere.png", "conversations": _chat(good)},
        {"id": "zero_byte_image", "image": "zero_bytes.png", "conversations": _chat(good)},
        {"id": "not_an_image", "image": "not_an_image.png", "conversations": _chat(good)},
        {"id": "truncated_image", "image": "truncated.png", "conversations": _chat(good)},
        {"id": "one_pixel", "image": "one_pixel.png", "conversations": _chat(good)},
        {"id": "very_wide", "image": "very_wide.png", "conversations": _chat(good)},
        {"id": "bomb", "image": "bomb.png", "conversations": _chat(good)},
        {"id": "truncated_away", "image": "good.png", "conversations": _chat(long_question)},
        ["not", "an", "object"],
    ]


EXPECTED_PROBLEMS = {
    "missing_field": ["no_conversations", "turn_without_value"],
    "role_order": ["gpt_first", "ends_with_human"],
    "empty_turn": ["empty_answer"],
    "placeholder_mismatch": ["placeholder_without_image", "image_without_placeholder", "two_images_one_placeholder"],
    "missing_image": ["missing_file"],
    "empty_image": ["zero_byte_image"],
    "unreadable_image": ["not_an_image", "truncated_image"],
    "extreme_image_size": ["one_pixel", "very_wide"],
    "decompression_bomb": ["bomb"],
    "truncated_away": ["truncated_away"],
}
EXPECTED_NOTICES = ["mode_rgba (rgba.png: RGBA)", "mode_p (palette.png: P)", "mode_l (gray.png: L)",
                    "mode_cmyk (cmyk.jpg: CMYK)", "mode_16bit (gray16.png: I;16)"]
# With these, the truncation check (tokenizer given) flags `truncated_away`.
MODEL_MAX_LENGTH = 120
IMAGE_TOKENS = 17


@dataclass
class BrokenCorpus:
    root: Path
    json_path: Path
    jsonl_path: Path
    broken_json_path: Path
    images: Path
    expected_problems: dict[str, list[str]]
    expected_notices: list[str]


def write_broken_corpus(root: Path) -> BrokenCorpus:
    images = root / "images"
    _write_images(images)
    json_path = root / "records.json"
    json_path.write_text(json.dumps(_records()), encoding="utf-8")
    jsonl_path = root / "records.jsonl"
    lines = [json.dumps({"id": "jsonl_ok", "conversations": _chat("Hi?", "Hello.")}).encode(),
             b'{"id": "syntax_error", "conversations": [',
             json.dumps({"id": "latin1_text", "conversations": _chat("Caf\u00e9?", "Oui.")},
                        ensure_ascii=False).encode("latin-1")]
    jsonl_path.write_bytes(b"\n".join(lines) + b"\n")
    broken_json_path = root / "broken.json"
    broken_json_path.write_text('[{"id": "a", "conversations": []},\n {"id": oops}]', encoding="utf-8")
    expected = {kind: list(ids) for kind, ids in EXPECTED_PROBLEMS.items()}
    expected["json_syntax"] = [f"{jsonl_path}, line 2"]
    expected["non_utf8_text"] = ["latin1_text"]
    expected["not_a_record"] = [f"{json_path}#23"]  # no id: the file and the position in it
    return BrokenCorpus(root, json_path, jsonl_path, broken_json_path, images, expected, list(EXPECTED_NOTICES))
