"""Generate the tiny offline dataset in LLaVA's JSON conversation format.

``generate_tiny_dataset(out_dir)`` writes synthetic scene pictures under ``out_dir/images`` plus
two annotation files:

* ``tiny_captions.json`` (stage 1): one short caption per image, asked for in varied words.
* ``tiny_instruct.json`` (stage 2): single- and multi-turn questions about one image, a few
  text-only samples and a few two-image comparisons.

Records follow LLaVA: ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``, where
``image`` is a path relative to ``out_dir`` (a list of paths for multi-image records, absent for
text-only ones) and each image has exactly one ``<image>`` placeholder in the human turns.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from tqdm import tqdm

from llava.tiny.images import Scene, describe_scene, random_scene, render_scene, scene_qa_pairs

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
IMAGES_DIRNAME = "images"
CAPTIONS_FILENAME = "tiny_captions.json"
INSTRUCT_FILENAME = "tiny_instruct.json"

CAPTION_REQUESTS = (
    "Describe the image briefly.",
    "Give a short caption for this picture.",
    "What does this image show?",
    "Write a one-sentence description of the image.",
    "Summarize the visual content of the image.",
    "Provide a brief description of the given image.",
    "What is in this picture?",
    "Describe what you see.",
)
COLOR_FACTS = (
    ("What color do you get by mixing blue and yellow?", "Green."),
    ("What color do you get by mixing red and white?", "Pink."),
    ("What color do you get by mixing red and yellow?", "Orange."),
    ("What color do you get by mixing red and blue?", "Purple."),
    ("What color is the sky on a clear day?", "Blue."),
    ("What color is fresh grass?", "Green."),
    ("What color is snow?", "White."),
    ("How many sides does a triangle have?", "3."),
    ("How many sides does a square have?", "4."),
    ("How many corners does a circle have?", "0."),
)
ORDINALS = ("first", "second")


def _turn(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


class _ImagePool:
    """Scenes rendered once to PNG files and shared by all records."""

    def __init__(self, out_dir: Path, rng: random.Random) -> None:
        self.out_dir = out_dir
        self.rng = rng
        self.scenes: list[Scene] = []
        self.paths: list[str] = []
        (out_dir / IMAGES_DIRNAME).mkdir(parents=True, exist_ok=True)

    def add(self, scene: Scene) -> int:
        index = len(self.scenes)
        relative = f"{IMAGES_DIRNAME}/scene_{index:05d}.png"
        render_scene(scene).save(self.out_dir / relative, optimize=False, compress_level=9)
        self.scenes.append(scene)
        self.paths.append(relative)
        return index

    def add_random(self, count: int) -> None:
        for _ in tqdm(range(count), desc="rendering tiny scenes", unit="img", leave=False):
            self.add(random_scene(self.rng))

    def random_index(self) -> int:
        return self.rng.randrange(len(self.scenes))


def _caption_records(pool: _ImagePool, rng: random.Random, count: int) -> list[dict]:
    records = []
    for i in range(count):
        index = i % len(pool.scenes)
        request = rng.choice(CAPTION_REQUESTS)
        records.append(
            {
                "id": f"tiny-cap-{i:05d}",
                "image": pool.paths[index],
                "conversations": [
                    _turn("human", f"{IMAGE_PLACEHOLDER}\n{request}"),
                    _turn("gpt", describe_scene(pool.scenes[index])),
                ],
            }
        )
    return records


def _single_image_record(pool: _ImagePool, rng: random.Random, record_id: str, num_turns: int) -> dict:
    index = pool.random_index()
    scene = pool.scenes[index]
    pairs = scene_qa_pairs(scene, rng)
    if rng.random() < 0.2:
        pairs.insert(0, (rng.choice(CAPTION_REQUESTS), describe_scene(scene)))
    conversations = []
    for turn, (question, answer) in enumerate(pairs[:num_turns]):
        prefix = f"{IMAGE_PLACEHOLDER}\n" if turn == 0 else ""
        conversations += [_turn("human", prefix + question), _turn("gpt", answer)]
    return {"id": record_id, "image": pool.paths[index], "conversations": conversations}


def _text_only_record(rng: random.Random, record_id: str) -> dict:
    if rng.random() < 0.5:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        op = rng.choice("+-")
        question, answer = f"What is {a} {op} {b}?", f"{a + b if op == '+' else a - b}."
    else:
        question, answer = rng.choice(COLOR_FACTS)
    return {"id": record_id, "conversations": [_turn("human", question), _turn("gpt", answer)]}


def _has_kind(scene: Scene, color: str, shape: str) -> bool:
    return any(obj.color == color and obj.shape == shape for obj in scene.objects)


def _partner_without(pool: _ImagePool, color: str, shape: str) -> int:
    """Index of a random pooled scene lacking a (color, shape) object; renders a new one if needed."""
    candidates = [i for i, scene in enumerate(pool.scenes) if not _has_kind(scene, color, shape)]
    if candidates:
        return pool.rng.choice(candidates)
    scene = random_scene(pool.rng)
    while _has_kind(scene, color, shape):
        scene = random_scene(pool.rng)
    return pool.add(scene)


def _multi_image_record(pool: _ImagePool, rng: random.Random, record_id: str) -> dict:
    """Two images, one containing an object the other lacks; ask which one has it."""
    with_index = pool.random_index()
    target = rng.choice(pool.scenes[with_index].objects)
    without_index = _partner_without(pool, target.color, target.shape)
    order = [with_index, without_index]
    rng.shuffle(order)
    answer = f"The {ORDINALS[order.index(with_index)]} image."
    question = f"Which image has {'an' if target.color[0] in 'aeiou' else 'a'} {target.color} {target.shape}?"
    conversations = [_turn("human", f"{IMAGE_PLACEHOLDER}\n" * len(order) + question), _turn("gpt", answer)]
    if rng.random() < 0.5:
        first, second = (pool.scenes[i] for i in order)
        same = first.background == second.background
        conversations += [
            _turn("human", "Do the two images have the same background color?"),
            _turn("gpt", "Yes." if same else "No."),
        ]
    return {"id": record_id, "image": [pool.paths[i] for i in order], "conversations": conversations}


def _instruct_records(pool: _ImagePool, rng: random.Random, count: int) -> list[dict]:
    num_text = max(1, count // 20) if count >= 3 else 0
    num_multi = max(1, count // 10) if count >= 3 else 0
    kinds = ["text"] * num_text + ["multi"] * num_multi + ["single"] * (count - num_text - num_multi)
    rng.shuffle(kinds)
    records = []
    single_turns = (1, 2, 1, 3)
    for i, kind in enumerate(kinds):
        record_id = f"tiny-inst-{i:05d}"
        if kind == "text":
            records.append(_text_only_record(rng, record_id))
        elif kind == "multi":
            records.append(_multi_image_record(pool, rng, record_id))
        else:
            records.append(_single_image_record(pool, rng, record_id, single_turns[i % len(single_turns)]))
    return records


def _write_json(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=1, ensure_ascii=False)
        handle.write("\n")


def generate_tiny_dataset(
    out_dir: str | Path, num_captions: int = 200, num_instruct: int = 200, seed: int = 0
) -> dict[str, Path]:
    """Write the tiny dataset under ``out_dir``; return its paths.

    Returns ``{"root", "images", "captions", "instruct"}``. The same seed gives the same files.
    One scene is drawn per caption record (at least 8); stage-2 records reuse these pictures.
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    pool = _ImagePool(out_dir, random.Random(rng.getrandbits(64)))
    num_scenes = max(num_captions, 8)
    logger.info("Rendering %d synthetic scenes into %s", num_scenes, out_dir / IMAGES_DIRNAME)
    pool.add_random(num_scenes)
    captions = _caption_records(pool, random.Random(rng.getrandbits(64)), num_captions)
    instruct = _instruct_records(pool, random.Random(rng.getrandbits(64)), num_instruct)
    paths = {
        "root": out_dir,
        "images": out_dir / IMAGES_DIRNAME,
        "captions": out_dir / CAPTIONS_FILENAME,
        "instruct": out_dir / INSTRUCT_FILENAME,
    }
    _write_json(paths["captions"], captions)
    _write_json(paths["instruct"], instruct)
    logger.info(
        "Wrote %d caption and %d instruction records using %d images to %s",
        len(captions),
        len(instruct),
        len(pool.scenes),
        out_dir,
    )
    return paths


def _json_paths(paths: Mapping[str, Path] | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, Mapping):
        return [Path(p) for p in paths.values() if str(p).endswith(".json")]
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def iter_dataset_texts(
    paths: Mapping[str, Path] | Iterable[str | Path] | str | Path, strip_image_tokens: bool = True
) -> Iterator[str]:
    """Yield every conversation turn's text from LLaVA-format JSON files.

    ``paths`` is the dict returned by ``generate_tiny_dataset`` (its ``.json`` entries are read), one
    path, or several. With ``strip_image_tokens`` the ``<image>`` placeholders (which never reach the
    tokenizer as text) and the newline after them are removed.
    """
    for path in _json_paths(paths):
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)
        for record in records:
            for turn in record["conversations"]:
                text = turn["value"]
                if strip_image_tokens:
                    text = text.replace(f"{IMAGE_PLACEHOLDER}\n", "").replace(IMAGE_PLACEHOLDER, "")
                yield text


__all__ = ["generate_tiny_dataset", "iter_dataset_texts"]
