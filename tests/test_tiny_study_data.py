"""`llava.tiny.study_data`: the small-scale study's pictures show what their answers say, the held-out
split is new pictures with enough questions per category, and generation is deterministic."""

import json
import random

import pytest
from PIL import Image

from llava.tiny.images import COLORS, POSITIONS, Scene, cell_center
from llava.tiny.study_data import (
    DOT_GRID,
    GROUPS,
    MAX_DOTS,
    QUESTIONS_FILENAME,
    StudyScene,
    generate_study_data,
    pixel_hash,
    random_study_scene,
)


def test_dense_pictures_have_one_dot_in_each_listed_cell_and_none_elsewhere():
    rng = random.Random(3)
    for _ in range(20):
        scene = random_study_scene(rng, "dense")
        assert 1 <= len(scene.dots) <= MAX_DOTS and len(set(scene.dots)) == len(scene.dots)
        image = scene.render()
        cell = image.width // DOT_GRID
        for row in range(DOT_GRID):
            for col in range(DOT_GRID):
                centre = image.getpixel((col * cell + cell // 2, row * cell + cell // 2))
                corner = image.getpixel((col * cell + 2, row * cell + 2))
                assert centre == COLORS[scene.color if (row, col) in scene.dots else scene.background]
                assert corner == COLORS[scene.background]  # a dot stays inside its own patch
        assert scene.questions() == {"dot_count": ("How many dots are there?", f"{len(scene.dots)}.")}


def test_coarse_pictures_draw_the_shape_in_its_cell_and_ask_background_and_shape():
    rng = random.Random(4)
    scenes = [random_study_scene(rng, "coarse") for _ in range(60)]
    assert {scene.shape for scene in scenes} == {"circle", "square", "triangle"}
    assert len({scene.cell for scene in scenes}) > 5 and all(scene.cell in POSITIONS for scene in scenes)
    for scene in scenes[:10]:
        image = scene.render()
        assert image.getpixel(cell_center_of(scene)) == COLORS[scene.color]
        assert image.getpixel((1, 1)) == COLORS[scene.background] or scene.cell == "top left"
        questions = scene.questions()
        assert set(questions) == set(GROUPS["coarse"])
        assert questions["background"][1] == scene.background.capitalize() + "."
        assert questions["shape"][1] in ("A circle.", "A square.", "A triangle.")


def cell_center_of(scene: StudyScene) -> tuple[int, int]:
    x, y = cell_center(Scene(336, 336, scene.background, ()), scene.cell)
    return x, y + 10  # a little below the centre: inside every shape, the triangle's apex is above


def test_unknown_group_is_refused():
    with pytest.raises(ValueError, match="unknown study group 'fine'"):
        random_study_scene(random.Random(0), "fine")


def test_generated_files_are_deterministic_held_out_and_complete(tmp_path):
    first = generate_study_data(tmp_path / "a", scenes_per_group=6, questions_per_category=5, seed=1)
    again = generate_study_data(tmp_path / "b", scenes_per_group=6, questions_per_category=5, seed=1)
    for key in ("captions", "instruct", "questions"):
        assert first[key].read_bytes() == again[key].read_bytes()
    questions = [json.loads(line) for line in (tmp_path / "a" / QUESTIONS_FILENAME).read_text().splitlines()]
    for group, categories in GROUPS.items():
        for category in categories:
            assert sum(q["category"] == category and q["group"] == group for q in questions) == 5
    assert len({q["question_id"] for q in questions}) == len(questions)
    training = {pixel_hash(Image.open(path).convert("RGB")) for path in (tmp_path / "a" / "images").glob("train_*")}
    held_out = {pixel_hash(Image.open(tmp_path / "a" / q["image"]).convert("RGB")) for q in questions}
    assert len(training) > 1 and not training & held_out

    conversations = json.loads(first["instruct"].read_text())
    captions = json.loads(first["captions"].read_text())
    assert len(conversations) == len(captions) == 12
    for record in conversations:
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert {c["conversations"][1]["value"].split()[-2] for c in captions} <= set(COLORS)  # "... on a X background."


def test_held_out_pictures_skip_repeats_of_training_and_of_each_other(tmp_path):
    """Coarse pictures are few (1512): 300 training and 300 held-out draws repeat some, and each repeat is
    skipped, so every held-out picture is new and distinct."""
    result = generate_study_data(tmp_path, scenes_per_group=300, questions_per_category=300, seed=0)
    assert result["held_out_repeats_skipped"] > 0
    training = {pixel_hash(Image.open(path).convert("RGB")) for path in (tmp_path / "images").glob("train_*")}
    held_out = [pixel_hash(Image.open(path).convert("RGB")) for path in (tmp_path / "images").glob("eval_*")]
    assert len(held_out) == 600 and len(set(held_out)) == 600 and not training & set(held_out)


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must be >= 1"):
        generate_study_data(tmp_path, scenes_per_group=0, questions_per_category=5)
