"""Tests for the generated tiny dataset: LLaVA record format, image files, and answers that match
the rendered pixels."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from llava.tiny.dataset import CAPTION_REQUESTS, generate_tiny_dataset, iter_dataset_texts
from llava.tiny.images import (
    COLORS,
    MIXED_SIZES,
    POSITIONS,
    SCENE_SIZE,
    SHAPES,
    Scene,
    SceneObject,
    cell_box,
    cell_center,
    describe_scene,
    object_radius,
    random_scene,
    render_scene,
    scene_from_dict,
    scene_qa_pairs,
    scene_to_dict,
)

PINPOINTS = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
PHRASE_TO_POSITION = {
    **{f"at the {p}": p for p in POSITIONS},
    "in the center": "center",
    "on the left": "left",
    "on the right": "right",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_tiny_dataset(tmp_path_factory.mktemp("tiny_data"), curriculum_scale=0.05)


def _load(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _images_of(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def _all_records(dataset) -> list[dict]:
    return _load(dataset["captions"]) + _load(dataset["instruct"]) + _load(dataset["curriculum"])


def test_default_sizes(dataset):
    assert len(_load(dataset["captions"])) == 200
    assert len(_load(dataset["instruct"])) == 200 + 10 + 10  # one per scene, then 5% text-only and 5% two-image
    assert len(list(dataset["images"].glob("*.png"))) >= 200
    assert len(_load(dataset["scenes"])) == 200


def test_records_alternate_human_gpt(dataset):
    ids = set()
    for record in _all_records(dataset):
        assert isinstance(record["id"], str) and record["id"] not in ids
        ids.add(record["id"])
        turns = record["conversations"]
        assert turns and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(isinstance(t["value"], str) and t["value"].strip() for t in turns)


def test_image_placeholders_match_images(dataset):
    for record in _all_records(dataset):
        turns = record["conversations"]
        num_images = len(_images_of(record))
        assert sum(t["value"].count("<image>") for t in turns if t["from"] == "human") == num_images
        assert all("<image>" not in t["value"] for t in turns if t["from"] == "gpt")
        if num_images:
            assert turns[0]["value"].startswith("<image>\n" * num_images)
            assert all("<image>" not in t["value"] for t in turns[1:])


def test_referenced_images_exist_and_open(dataset):
    referenced = {path for record in _all_records(dataset) for path in _images_of(record)}
    assert referenced
    for relative in referenced:
        path = dataset["root"] / relative
        assert path.is_file(), relative
        with Image.open(path) as image:
            assert image.mode == "RGB"
            assert image.size == SCENE_SIZE


def test_instruct_mix_has_every_kind(dataset):
    records = _load(dataset["instruct"])
    text_only = [r for r in records if "image" not in r]
    multi_image = [r for r in records if isinstance(r.get("image"), list)]
    single = [r for r in records if isinstance(r.get("image"), str)]
    assert text_only and multi_image and single
    assert all(len(r["image"]) == 2 for r in multi_image)
    assert len({r["image"] for r in single}) == len(single)  # one conversation per picture
    assert min(len(r["conversations"]) // 2 for r in single) >= 5  # every question the scene has
    captioned = [r for r in single if r["conversations"][0]["value"].split("\n", 1)[1] in CAPTION_REQUESTS]
    assert 0.1 < len(captioned) / len(single) < 0.3  # a fifth start by asking for a caption
    arithmetic = [r for r in text_only if r["conversations"][0]["value"].startswith("What is ")]
    for record in arithmetic:
        a, op, b = re.match(r"What is (\d+) ([+-]) (\d+)\?", record["conversations"][0]["value"]).groups()
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert record["conversations"][1]["value"] == f"{expected}."


def test_multi_image_answers_agree_with_captions(dataset):
    captions = {r["image"]: r["conversations"][1]["value"] for r in _load(dataset["captions"])}
    checked = 0
    for record in _load(dataset["instruct"]):
        if not isinstance(record.get("image"), list):
            continue
        question, answer = (t["value"] for t in record["conversations"][:2])
        kind = re.search(r"Which image has (an? \w+ \w+)\?", question).group(1)
        chosen = {"The first image.": 0, "The second image.": 1}[answer]
        first, second = (captions[path].lower() for path in record["image"])
        has = [kind in first, kind in second]
        assert has[chosen] and not has[1 - chosen], (kind, first, second)
        checked += 1
    assert checked >= 10


def _pixel(image: Image.Image, xy: tuple[float, float]) -> tuple[int, int, int]:
    return image.getpixel((int(xy[0]), int(xy[1])))


def _shape_from_pixels(image: Image.Image, scene: Scene, position: str) -> str:
    """Tell the shape in a cell by probing two points only a square or a triangle covers."""
    cx, cy = cell_center(scene, position)
    r = object_radius(scene)
    background = COLORS[scene.background]
    if _pixel(image, (cx + 0.8 * r, cy - 0.8 * r)) != background:
        return "square"
    if _pixel(image, (cx - 0.9 * r, cy + 0.9 * r)) != background:
        return "triangle"
    return "circle"


def _check_text_answer(image: Image.Image, scene: Scene, question: str, answer: str) -> None:
    if question == "What text is written in the image?":
        assert answer == scene.text and re.fullmatch(r"[A-Z0-9]{2,4}", answer)
        _assert_text_drawn(image, scene)
    elif question == "Where is the text written?":
        assert PHRASE_TO_POSITION[answer.rstrip(".").lower()] == scene.text_position
        _assert_text_drawn(image, scene)
    else:
        assert question == "Is there any text in the image?"
        assert (answer == "Yes.") == bool(scene.text)
        if scene.text:
            _assert_text_drawn(image, scene)


def _check_answer(image: Image.Image, scene: Scene, question: str, answer: str) -> None:
    """Check one answer against the rendered pixels (never against the scene's object list)."""
    word = answer.rstrip(".").lower()
    if "text" in question:
        _check_text_answer(image, scene, question, answer)
    elif match := re.fullmatch(r"What color is the object (.+)\?", question):
        assert _pixel(image, cell_center(scene, PHRASE_TO_POSITION[match.group(1)])) == COLORS[word]
    elif question == "What color is the background?":
        assert _pixel(image, (0, 0)) == COLORS[word]
    elif match := re.fullmatch(r"What color is the (\w+)\?", question):
        cells = [p for p in POSITIONS if _shape_at(image, scene, p) == match.group(1)]
        assert len(cells) == 1
        assert _pixel(image, cell_center(scene, cells[0])) == COLORS[word]
    elif match := re.fullmatch(r"What shape is (.+)\?", question):
        assert _shape_at(image, scene, PHRASE_TO_POSITION[match.group(1)]) == word.split()[-1]
    elif match := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        position = PHRASE_TO_POSITION[word]
        assert _pixel(image, cell_center(scene, position)) == COLORS[match.group(1)]
        assert _shape_at(image, scene, position) == match.group(2)
    elif match := re.fullmatch(r"Is there a shape (.+)\?", question):
        assert (_shape_at(image, scene, PHRASE_TO_POSITION[match.group(1)]) is not None) == (word == "yes")
    elif match := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", question):
        color, shape = match.groups()
        found = any(
            _shape_at(image, scene, p) == shape and _pixel(image, cell_center(scene, p)) == COLORS[color]
            for p in POSITIONS
        )
        assert found == (word == "yes")
    elif question == "How many shapes are there in the image?":
        assert sum(_shape_at(image, scene, p) is not None for p in POSITIONS) == int(word)
    else:
        shape = re.fullmatch(r"How many (\w+)s are there\?", question).group(1)
        assert sum(_shape_at(image, scene, p) == shape for p in POSITIONS) == int(word)


def _shape_at(image: Image.Image, scene: Scene, position: str) -> str | None:
    """The shape read from the pixels of a cell, None for an empty cell (text cells hold no shape)."""
    if position == scene.text_position:
        return None
    if _pixel(image, cell_center(scene, position)) == COLORS[scene.background]:
        return None
    return _shape_from_pixels(image, scene, position)


def _assert_text_drawn(image: Image.Image, scene: Scene) -> None:
    left, top, right, bottom = (int(v) for v in cell_box(scene, scene.text_position))
    cell = image.crop((left, top, right, bottom))
    counts = {color: count for count, color in cell.getcolors(cell.width * cell.height)}
    text_pixels = counts.get(COLORS[scene.text_color], 0)
    assert text_pixels > 0.01 * cell.width * cell.height


def test_answers_match_rendered_pixels():
    rng = random.Random(123)
    asked = set()
    for index in range(40):
        scene = random_scene(rng, SCENE_SIZE if index % 2 else rng.choice(MIXED_SIZES))
        image = render_scene(scene)
        assert image.size == scene.size and image.mode == "RGB"
        for obj in scene.objects:
            assert _pixel(image, cell_center(scene, obj.position)) == COLORS[obj.color]
            assert _shape_from_pixels(image, scene, obj.position) == obj.shape
        for question, answer in scene_qa_pairs(scene, rng):
            _check_answer(image, scene, question, answer)
            asked.add(question.split()[0] + " " + question.split()[1])
    assert {"What color", "What shape", "Where is", "How many", "What text", "Is there"} <= asked


def test_scene_dicts_round_trip():
    rng = random.Random(5)
    for _ in range(20):
        scene = random_scene(rng)
        assert scene_from_dict(json.loads(json.dumps(scene_to_dict(scene)))) == scene


def test_scene_rules():
    rng = random.Random(7)
    scenes = [random_scene(rng) for _ in range(200)]
    for scene in scenes:
        assert 1 <= len(scene.objects) <= 3
        cells = [obj.position for obj in scene.objects] + ([scene.text_position] if scene.text else [])
        assert len(cells) == len(set(cells))
        assert all(obj.color != scene.background and obj.shape in SHAPES for obj in scene.objects)
        assert scene.background in describe_scene(scene)
    assert any(scene.text for scene in scenes) and any(not scene.text for scene in scenes)
    assert {len(scene.objects) for scene in scenes} == {1, 2, 3}


def test_caption_mentions_everything():
    scene = Scene(
        width=336,
        height=336,
        background="white",
        objects=(SceneObject("red", "circle", "top left"), SceneObject("blue", "square", "center")),
        text="AB3",
        text_position="bottom",
    )
    assert describe_scene(scene) == (
        "A red circle at the top left and a blue square in the center, on a white background."
        ' The text "AB3" is written at the bottom.'
    )


def _best_resolution(width: int, height: int) -> tuple[int, int]:
    """LLaVA-NeXT's select_best_resolution, written out as a reference for the crop-count check."""
    best, best_effective, best_waste = None, -1, float("inf")
    for cand_w, cand_h in PINPOINTS:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_w, cand_h), effective, waste
    return best


def test_mixed_sizes_give_every_anyres_crop_count():
    counts = set()
    for size in MIXED_SIZES:
        cand_w, cand_h = _best_resolution(*size)
        counts.add((cand_w // 336) * (cand_h // 336) + 1)
    assert counts == {3, 4, 5}


def test_generation_is_deterministic(tmp_path):
    first = generate_tiny_dataset(tmp_path / "a", num_scenes=10, seed=3, curriculum_scale=0.01)
    second = generate_tiny_dataset(tmp_path / "b", num_scenes=10, seed=3, curriculum_scale=0.01)
    other = generate_tiny_dataset(tmp_path / "c", num_scenes=10, seed=4, curriculum_scale=0.01)
    for key in ("captions", "instruct", "curriculum", "scenes"):
        assert first[key].read_bytes() == second[key].read_bytes()
        assert first[key].read_bytes() != other[key].read_bytes()
    names = sorted(p.name for p in first["images"].iterdir())
    assert names == sorted(p.name for p in second["images"].iterdir())
    for name in names:
        assert (first["images"] / name).read_bytes() == (second["images"] / name).read_bytes()


def test_small_dataset_still_has_every_kind(tmp_path):
    paths = generate_tiny_dataset(tmp_path, num_scenes=2, seed=1, curriculum_scale=0.01)  # at least 8 scenes
    instruct = _load(paths["instruct"])
    assert len(_load(paths["captions"])) == 8 and len(instruct) == 8 + 1 + 1
    assert any("image" not in r for r in instruct)
    assert any(isinstance(r.get("image"), list) for r in instruct)


def test_iter_dataset_texts(dataset):
    # the generated files' texts, without the curriculum (the same questions again; the tokenizer's
    # corpus stays the captions and the conversations)
    records = _load(dataset["captions"]) + _load(dataset["instruct"])
    texts = list(iter_dataset_texts(dataset))
    assert len(texts) == sum(len(r["conversations"]) for r in records)
    assert all("<image>" not in text for text in texts)
    assert records[0]["conversations"][1]["value"] in texts
    raw = list(iter_dataset_texts([dataset["instruct"]], strip_image_tokens=False))
    assert sum(text.count("<image>") for text in raw) == sum(
        len(_images_of(r)) for r in _load(dataset["instruct"])
    )
