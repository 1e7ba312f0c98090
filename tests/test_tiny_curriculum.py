"""Tests for the tiny stage-2 curriculum: phase order, what each phase asks, answers true to the
scene, and the launch script reading it in order with a decay matched to its length."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from llava.tiny.curriculum import (
    CURRICULUM_BATCH,
    CURRICULUM_PHASES,
    curriculum_records,
    curriculum_steps,
    scene_questions,
)
from llava.tiny.dataset import CAPTION_REQUESTS
from llava.tiny.images import describe_scene, random_scene

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "finetune_proxyv.sh"
SCALE = 0.05
LOOKUPS = ("What shape is", "What color is the object", "Where is the")


@pytest.fixture(scope="module")
def curriculum():
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(40)]
    paths = [f"images/scene_{i:05d}.png" for i in range(len(scenes))]
    return scenes, paths, curriculum_records(scenes, paths, random.Random(1), CAPTION_REQUESTS, SCALE)


def _phase(record: dict) -> str:
    return record["id"].split("-")[2]


def test_phases_come_in_order_with_their_sizes(curriculum):
    _, _, records = curriculum
    assert len(records) == curriculum_steps(SCALE) * CURRICULUM_BATCH
    names = [_phase(record) for record in records]
    order = [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]
    assert order == [phase.name for phase in CURRICULUM_PHASES]
    for phase in CURRICULUM_PHASES:
        assert names.count(phase.name) == round(phase.batches * SCALE) * CURRICULUM_BATCH


def test_each_phase_asks_only_its_questions_and_the_answers_are_true(curriculum):
    scenes, paths, records = curriculum
    by_path = dict(zip(paths, scenes))
    phases = {phase.name: phase for phase in CURRICULUM_PHASES}
    kinds = {name: set() for name in phases}
    for record in records:
        turns = record["conversations"]
        assert len(turns) == 2 and turns[0]["value"].startswith("<image>\n")
        question, answer = turns[0]["value"][len("<image>\n"):], turns[1]["value"]
        scene, phase = by_path[record["image"]], _phase(record)
        if question in CAPTION_REQUESTS:
            assert phase == "all" and answer == describe_scene(scene)
            kinds[phase].add("caption")
            continue
        asks = phases[phase].asks + (("What color is the background",) if phases[phase].background_share else ())
        assert not asks or question.startswith(asks)
        # the look-ups and the fixed questions come out for any draw; the randomly drawn ones ("Is there a
        # blue square in the image?") are checked when one of fifty draws asks them too
        truth = {q: a for seed in range(50) for q, a in scene_questions(scene, random.Random(seed))}
        assert question in truth or not question.startswith((*LOOKUPS, "What color is the background"))
        expected = truth.get(question, answer if answer not in ("Circle.", "Square.", "Triangle.") else "A " + answer.lower())
        assert answer == (expected[2:].capitalize() if expected in ("A circle.", "A square.", "A triangle.") else expected)
        kinds[phase].add(next((p for p in LOOKUPS if question.startswith(p)), question))
    assert kinds["shape"] == {"What shape is", "What color is the background?"}
    assert kinds["shape_color"] == {"What shape is", "What color is the object", "What color is the background?"}
    assert kinds["lookup"] == {*LOOKUPS, "Is there any text in the image?"}
    assert {"caption", "What color is the background?", "How many shapes are there in the image?",
            "Is there any text in the image?", *LOOKUPS} <= kinds["all"]


def test_shape_answers_name_the_shape_alone(curriculum):
    _, _, records = curriculum
    answers = {record["conversations"][1]["value"] for record in records}
    assert {"Circle.", "Square.", "Triangle."} <= answers
    assert not answers & {"A circle.", "A square.", "A triangle."}


def test_the_shape_phase_mixes_in_its_share_of_background_questions(curriculum):
    _, _, records = curriculum
    shape_phase = next(phase for phase in CURRICULUM_PHASES if phase.name == "shape")
    asked = [record["conversations"][0]["value"] for record in records if _phase(record) == "shape"]
    share = sum(question.endswith("What color is the background?") for question in asked) / len(asked)
    assert 0 < shape_phase.background_share < 0.5
    assert abs(share - shape_phase.background_share) < 3 * (shape_phase.background_share / len(asked)) ** 0.5


def test_the_script_reads_the_curriculum_in_order_and_decays_over_the_last_phase():
    tiny_branch = SCRIPT.read_text().split("else", 1)[0]
    assert "tiny_curriculum.json" in tiny_branch and "--train_sampling_strategy sequential" in tiny_branch
    assert "--group_by_modality_length False" in tiny_branch and "EPOCHS=1" in tiny_branch
    assert f"BATCH={CURRICULUM_BATCH};" in tiny_branch
    decay = int(re.search(r'"num_decay_steps": (\d+)', tiny_branch).group(1))
    assert decay == CURRICULUM_PHASES[-1].batches == 600


def test_a_phase_skips_pictures_without_its_question(monkeypatch):
    """Two red circles and no text: no position question names one object; the phase draws another picture."""
    import llava.tiny.curriculum as curriculum_module
    from llava.tiny.images import Scene, SceneObject

    twins = Scene(336, 336, "white", (SceneObject("red", "circle", "top left"), SceneObject("red", "circle", "center")))
    single = Scene(336, 336, "white", (SceneObject("blue", "square", "bottom"),))
    phase = curriculum_module.CurriculumPhase("position", ("Where is the",), 2)
    monkeypatch.setattr(curriculum_module, "CURRICULUM_PHASES", (phase,))
    records = curriculum_records([twins, single], ["twins.png", "single.png"], random.Random(0), CAPTION_REQUESTS)
    assert len(records) == 2 * CURRICULUM_BATCH
    assert {record["image"] for record in records} == {"single.png"}
    assert {record["conversations"][1]["value"] for record in records} == {"At the bottom."}
