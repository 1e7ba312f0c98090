"""Generate the tiny offline dataset in LLaVA's JSON conversation format.

``generate_tiny_dataset(out_dir)`` writes synthetic scene pictures under ``out_dir/images`` plus
four files:

* ``tiny_captions.json`` (stage 1): one short caption per picture, asked for in varied words.
* ``tiny_instruct.json`` (stage 2): for every picture one conversation asking all of its questions
  (about ten turns: colours, shapes, positions, counts, text; a fifth start by asking for a caption),
  plus a few text-only samples and a few two-image comparisons (5% each). Ten supervised answers
  per picture, rather than one or two, is what lets the tiny model learn in a few CPU minutes.
* ``tiny_curriculum.json`` (the tiny stage-2 recipe's data): the same pictures' questions as
  single-question records in the order the tiny decoder learns them (``llava.tiny.curriculum``).
* ``tiny_scenes.json``: what each picture shows (``llava.tiny.images.scene_to_dict``), which the
  tiny CLIP's pretraining (``llava.tiny.pretrain_clip``) learns from.

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

from llava.tiny.curriculum import curriculum_records
from llava.tiny.images import Scene, describe_scene, random_scene, render_scene, scene_qa_pairs, scene_to_dict

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
IMAGES_DIRNAME = "images"
CAPTIONS_FILENAME = "tiny_captions.json"
INSTRUCT_FILENAME = "tiny_instruct.json"
SCENES_FILENAME = "tiny_scenes.json"
CURRICULUM_FILENAME = "tiny_curriculum.json"
CAPTION_TURN_FRACTION = 0.2  # stage-2 conversations that start by asking for a caption
EXTRA_RECORD_FRACTION = 0.05  # text-only records, and two-image records, each this fraction of the scenes

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
        render_scene(scene).save(self.out_dir / relative, optimize=False, compress_level=1)
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


def _scene_questions_record(pool: _ImagePool, rng: random.Random, record_id: str, index: int) -> dict:
    """One conversation about picture ``index`` asking every question ``scene_qa_pairs`` has for it,
    a fifth of them first asking for a caption (so the tuned model still describes a picture)."""
    scene = pool.scenes[index]
    pairs = scene_qa_pairs(scene, rng)
    if rng.random() < CAPTION_TURN_FRACTION:
        pairs.insert(0, (rng.choice(CAPTION_REQUESTS), describe_scene(scene)))
    conversations = []
    for turn, (question, answer) in enumerate(pairs):
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


def _instruct_records(pool: _ImagePool, rng: random.Random) -> list[dict]:
    """One all-questions conversation per pooled picture, then text-only and two-image records, shuffled."""
    num_scenes = len(pool.scenes)
    num_extra = max(1, round(EXTRA_RECORD_FRACTION * num_scenes))
    records = [_scene_questions_record(pool, rng, f"tiny-inst-{i:05d}", i) for i in range(num_scenes)]
    records += [_text_only_record(rng, f"tiny-text-{i:05d}") for i in range(num_extra)]
    records += [_multi_image_record(pool, rng, f"tiny-pair-{i:05d}") for i in range(num_extra)]
    rng.shuffle(records)
    return records


def _write_json(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=1, ensure_ascii=False)
        handle.write("\n")


def generate_tiny_dataset(out_dir: str | Path, num_scenes: int = 200, seed: int = 0,
                          curriculum_scale: float = 1.0) -> dict[str, Path]:
    """Write the tiny dataset of ``num_scenes`` pictures (at least 8) under ``out_dir``; return its paths.

    Returns ``{"root", "images", "captions", "instruct", "curriculum", "scenes"}``. The same seed gives
    the same files. ``curriculum_scale`` shrinks the curriculum's phases (tests).
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    pool = _ImagePool(out_dir, random.Random(rng.getrandbits(64)))
    num_scenes = max(num_scenes, 8)
    logger.info("Rendering %d synthetic scenes into %s", num_scenes, out_dir / IMAGES_DIRNAME)
    pool.add_random(num_scenes)
    captions = _caption_records(pool, random.Random(rng.getrandbits(64)), num_scenes)
    instruct = _instruct_records(pool, random.Random(rng.getrandbits(64)))  # may render a few partner scenes
    # over every pooled picture: the training scenes and the partners the two-image conversations rendered
    curriculum = curriculum_records(list(pool.scenes), list(pool.paths), random.Random(rng.getrandbits(64)),
                                    CAPTION_REQUESTS, curriculum_scale)
    paths = {
        "root": out_dir,
        "images": out_dir / IMAGES_DIRNAME,
        "captions": out_dir / CAPTIONS_FILENAME,
        "instruct": out_dir / INSTRUCT_FILENAME,
        "curriculum": out_dir / CURRICULUM_FILENAME,
        "scenes": out_dir / SCENES_FILENAME,
    }
    _write_json(paths["captions"], captions)
    _write_json(paths["instruct"], instruct)
    _write_json(paths["curriculum"], curriculum)
    _write_json(paths["scenes"], [{"image": path, **scene_to_dict(scene)} for path, scene in zip(pool.paths, pool.scenes)])
    logger.info(
        "Wrote %d caption, %d instruction and %d curriculum records (%d answers) using %d images to %s",
        len(captions),
        len(instruct),
        len(curriculum),
        sum(len(record["conversations"]) // 2 for record in instruct + curriculum),
        len(pool.scenes),
        out_dir,
    )
    return paths


def _json_paths(paths: Mapping[str, Path] | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, Mapping):
        return [Path(p) for p in paths.values() if Path(p).name in (CAPTIONS_FILENAME, INSTRUCT_FILENAME)]
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def iter_dataset_texts(
    paths: Mapping[str, Path] | Iterable[str | Path] | str | Path, strip_image_tokens: bool = True
) -> Iterator[str]:
    """Yield every conversation turn's text from LLaVA-format JSON files.

    ``paths`` is the dict returned by ``generate_tiny_dataset`` (its two annotation files are read), one
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
