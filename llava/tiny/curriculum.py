"""The tiny stage-2 curriculum: single-question records in the order the tiny decoder can learn them.

A 64-wide, 4-layer decoder trained for minutes does not learn to find one grid cell from a position
word ("What shape is at the top left?") when every kind of question is mixed from the start: the easy,
whole-picture questions (background, count, text present) are learnt first and the per-cell look-up
never emerges (shape and position stay at chance). Taught one look-up at a time it does:

* phase ``shape``: shape questions, which teach the look-up itself, with a few background-colour
  questions mixed in (``background_share``): taught shapes alone, the decoder never learnt colour
  words afterwards (background and object colour at chance), and taught colours first it learnt the
  shape look-up only part way;
* phase ``shape_color``: shape, object-colour and background questions (the same look-up, another answer);
* phase ``lookup``: shape, object-colour and position questions (position asks the reverse look-up,
  "Where is the red circle?", which this decoder has not learnt: it names the cell of one of the
  picture's objects, right about as often as a random pick) and whether there is text (asked only
  in the last phase, text presence was learnt by some runs and not others: a baseline run answered
  it at chance);
* phase ``all``: any of the picture's questions and a few caption requests, so the easy kinds are
  learnt and the tuned model still describes a picture.

Each record is one random training picture and one question (single-turn, as the evaluation asks).
The records are written in phase order; the tiny stage-2 recipe reads them in that order
(``--train_sampling_strategy sequential``, one epoch) at a constant learning rate that decays over the
last phase. Shape answers name the shape alone ("Circle."); ``score_tiny`` normalises the article
away, so the held-out split's "A circle." matches.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from .images import (
    Scene,
    _unique_kinds,
    background_question,
    describe_scene,
    object_color_question,
    position_question,
    scene_qa_pairs,
    shape_question,
)

CURRICULUM_BATCH = 32  # the tiny stage-2 batch: phase lengths below are in batches of this size


class CurriculumPhase(NamedTuple):
    """One phase: the question prefixes it asks (empty: any question), its length in batches, and the
    share of its records that ask the background colour instead."""

    name: str
    asks: tuple[str, ...]
    batches: int
    background_share: float = 0.0


CURRICULUM_PHASES: tuple[CurriculumPhase, ...] = (
    CurriculumPhase("shape", ("What shape is",), 800, background_share=0.1),
    CurriculumPhase("shape_color", ("What shape is", "What color is the object", "What color is the background"), 300),
    CurriculumPhase("lookup", ("What shape is", "What color is the object", "Where is the", "Is there any text"), 500),
    CurriculumPhase("all", (), 600),
)
CAPTION_FRACTION = 0.05  # of the `all` phase's records: caption requests
SHAPES_WITH_ARTICLE = ("A circle.", "A square.", "A triangle.")


def _phase_batches(phase: CurriculumPhase, scale: float) -> int:
    return max(1, round(phase.batches * scale))


def curriculum_steps(scale: float = 1.0) -> int:
    """Optimizer steps of one epoch over the curriculum at ``CURRICULUM_BATCH``."""
    return sum(_phase_batches(phase, scale) for phase in CURRICULUM_PHASES)


def _bare_shape(answer: str) -> str:
    """'A circle.' -> 'Circle.'; any other answer unchanged."""
    return answer[2:].capitalize() if answer in SHAPES_WITH_ARTICLE else answer


def scene_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Every question the picture answers, once: ``scene_qa_pairs`` plus each object's shape and colour
    question and each uniquely named object's position question."""
    pairs = scene_qa_pairs(scene, rng)
    pairs += [shape_question(obj) for obj in scene.objects]
    pairs += [object_color_question(obj) for obj in scene.objects]
    pairs += [position_question(obj) for obj in _unique_kinds(scene)]
    unique: dict[str, str] = {}
    for question, answer in pairs:
        unique.setdefault(question, answer)
    return list(unique.items())


def _phase_questions(phase: CurriculumPhase, scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    return [pair for pair in scene_questions(scene, rng) if not phase.asks or pair[0].startswith(phase.asks)]


def _picture_record(record_id: str, image: str, question: str, answer: str) -> dict:
    return {"id": record_id, "image": image,
            "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                              {"from": "gpt", "value": _bare_shape(answer)}]}


def curriculum_records(scenes: list[Scene], paths: list[str], rng: random.Random, caption_requests: tuple[str, ...],
                       scale: float = 1.0) -> list[dict]:
    """The curriculum over pictures ``scenes`` (files ``paths``), phase after phase.

    ``scale`` shrinks every phase (tests); at 1 the curriculum is ``curriculum_steps()`` batches.
    """
    records: list[dict] = []
    for phase in CURRICULUM_PHASES:
        for i in range(_phase_batches(phase, scale) * CURRICULUM_BATCH):
            index = rng.randrange(len(scenes))
            if phase.background_share and rng.random() < phase.background_share:
                question, answer = background_question(scenes[index])
            elif not phase.asks and rng.random() < CAPTION_FRACTION:
                question, answer = rng.choice(caption_requests), describe_scene(scenes[index])
            else:
                pairs = _phase_questions(phase, scenes[index], rng)
                while not pairs:  # a picture with no question of this phase (no unique object to find): another
                    index = rng.randrange(len(scenes))
                    pairs = _phase_questions(phase, scenes[index], rng)
                question, answer = rng.choice(pairs)
            records.append(_picture_record(f"tiny-cur-{phase.name}-{i:05d}", paths[index], question, answer))
    return records


__all__ = ["CURRICULUM_BATCH", "CURRICULUM_PHASES", "CurriculumPhase", "curriculum_records", "curriculum_steps", "scene_questions"]
