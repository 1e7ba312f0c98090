"""Pictures, training conversations and held-out questions of the small-scale study's two task groups.

* **coarse**: one shape (circle, square or triangle, drawn as in the tiny dataset) in one cell of a 3x3
  grid on a flat background. The questions ask the background colour and the shape, wherever it is:
  a few vision tokens carry the answer.
* **dense**: one to eight small dots on a flat background, each inside a different patch of the
  tiny CLIP's 6x6 grid (``DOT_GRID``), so the answer to "How many dots are there?" is spread over
  the vision tokens and every token may hold part of it: a method that drops or merges vision
  tokens loses dots.

Pictures are square (``SCENE_SIZE``) like the tiny dataset's. Everything comes from a seeded
``random.Random``; held-out pictures are drawn from a stream of their own and any that repeats a
training picture or an earlier held-out picture pixel for pixel is skipped, so every held-out picture
is new and distinct.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from llava.errors import UsageError

from .images import COLORS, POSITIONS, SCENE_SIZE, SHAPES, Scene, SceneObject, render_scene

logger = logging.getLogger(__name__)

GROUPS: dict[str, tuple[str, ...]] = {"coarse": ("background", "shape"), "dense": ("dot_count",)}
CATEGORY_CHANCE: dict[str, float] = {"background": 1 / len(COLORS), "shape": 1 / len(SHAPES), "dot_count": 1 / 8}
DOT_GRID = 6  # dots sit in distinct cells of this grid: the tiny CLIP's 6x6 patches of a 336 picture
MAX_DOTS = 8
DOT_RADIUS_FRACTION = 0.22  # of a grid cell's side
TRAIN_FILENAME = "study_instruct.json"
CAPTIONS_FILENAME = "study_captions.json"
QUESTIONS_FILENAME = "study_questions.jsonl"
MAX_HELD_OUT_REPEATS = 100_000
# Bumped when the same settings give other pictures or questions, so a study folder of an older version
# is refused rather than mixed. 2: held-out pictures are distinct from each other.
STUDY_DATA_VERSION = 2


@dataclass(frozen=True)
class StudyScene:
    """One picture: its group, background, and either a shape (coarse) or dot cells (dense)."""

    group: str
    background: str
    color: str
    shape: str | None = None
    cell: str | None = None  # the shape's cell of the tiny scenes' 3x3 grid (`images.POSITIONS`)
    dots: tuple[tuple[int, int], ...] = ()

    def render(self, size: tuple[int, int] = SCENE_SIZE) -> Image.Image:
        if self.group == "coarse":  # the tiny dataset's renderer: the tiny CLIP was pretrained on its objects
            return render_scene(Scene(*size, self.background, (SceneObject(self.color, self.shape, self.cell),)))
        image = Image.new("RGB", size, COLORS[self.background])
        draw, fill = ImageDraw.Draw(image), COLORS[self.color]
        width, height = size
        for row, col in self.dots:
            cell_w, cell_h = width / DOT_GRID, height / DOT_GRID
            cx, cy, radius = (col + 0.5) * cell_w, (row + 0.5) * cell_h, DOT_RADIUS_FRACTION * min(cell_w, cell_h)
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        return image

    def questions(self) -> dict[str, tuple[str, str]]:
        """{category: (question, answer)} for the held-out split and the training chats."""
        background = ("What color is the background?", self.background.capitalize() + ".")
        if self.group == "coarse":
            article = "An" if self.shape[0] in "aeiou" else "A"
            return {"background": background, "shape": ("What shape is in the image?", f"{article} {self.shape}.")}
        return {"dot_count": ("How many dots are there?", f"{len(self.dots)}.")}

    def extra_questions(self) -> list[tuple[str, str]]:
        """Training-only questions that teach the same features (the colour of the shape or dots)."""
        question = "What color is the shape?" if self.group == "coarse" else "What color are the dots?"
        extra = [(question, self.color.capitalize() + ".")]
        if self.group == "dense":
            extra.append(("What color is the background?", self.background.capitalize() + "."))
        return extra

    def caption(self) -> str:
        if self.group == "coarse":
            return f"A {self.color} {self.shape} on a {self.background} background."
        count = len(self.dots)
        return f"{count} {self.color} dot{'s' if count > 1 else ''} on a {self.background} background."


def random_study_scene(rng: random.Random, group: str) -> StudyScene:
    background = rng.choice(list(COLORS))
    color = rng.choice([name for name in COLORS if name != background])
    if group == "coarse":
        return StudyScene(group, background, color, shape=rng.choice(SHAPES), cell=rng.choice(list(POSITIONS)))
    if group != "dense":
        raise ValueError(f"unknown study group {group!r}; expected one of {', '.join(GROUPS)}")
    cells = [(row, col) for row in range(DOT_GRID) for col in range(DOT_GRID)]
    return StudyScene(group, background, color, dots=tuple(sorted(rng.sample(cells, rng.randint(1, MAX_DOTS)))))


def pixel_hash(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def _turn(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


def _training_records(scene: StudyScene, path: str, index: int, rng: random.Random) -> tuple[dict, dict]:
    """(caption record for stage 1, question conversation for stage 2) of one training picture."""
    caption = {"id": f"study-cap-{index:05d}", "image": path,
               "conversations": [_turn("human", "<image>\nDescribe the image briefly."), _turn("gpt", scene.caption())]}
    pairs = list(dict(list(scene.questions().values()) + scene.extra_questions()).items())
    rng.shuffle(pairs)
    turns = []
    for number, (question, answer) in enumerate(pairs):
        turns += [_turn("human", ("<image>\n" if number == 0 else "") + question), _turn("gpt", answer)]
    return caption, {"id": f"study-qa-{index:05d}", "image": path, "conversations": turns}


def generate_study_data(out_dir: str | Path, scenes_per_group: int, questions_per_category: int,
                        seed: int = 0) -> dict:
    """Write the study's training pictures and files and its held-out split under `out_dir`.

    Training: `scenes_per_group` pictures of each group, one caption record each (stage 1) and one
    conversation asking all of the picture's questions (stage 2). Held out: new pictures until every
    category has `questions_per_category` questions. Returns the paths and counts.
    """
    if scenes_per_group < 1 or questions_per_category < 1:
        raise ValueError(f"scenes_per_group and questions_per_category must be >= 1, got {scenes_per_group} "
                         f"and {questions_per_category}.")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"study-train-{seed}")
    captions, conversations, seen = [], [], set()
    for index in tqdm(range(scenes_per_group * len(GROUPS)), desc="study training pictures", unit="picture"):
        scene = random_study_scene(rng, list(GROUPS)[index % len(GROUPS)])
        image, path = scene.render(), f"images/train_{index:05d}.png"
        image.save(out_dir / path, compress_level=1)
        seen.add(pixel_hash(image))
        caption, conversation = _training_records(scene, path, index, rng)
        captions.append(caption)
        conversations.append(conversation)
    rng.shuffle(conversations)
    (out_dir / CAPTIONS_FILENAME).write_text(json.dumps(captions), encoding="utf-8")
    (out_dir / TRAIN_FILENAME).write_text(json.dumps(conversations), encoding="utf-8")
    questions, skipped = _held_out_questions(out_dir, questions_per_category, seen, seed)
    logger.info("Wrote the study data to %s: %d training pictures, %d held-out questions (%d held-out pictures "
                "that repeated a training or an earlier held-out picture were skipped)", out_dir, len(captions),
                len(questions), skipped)
    return {"captions": out_dir / CAPTIONS_FILENAME, "instruct": out_dir / TRAIN_FILENAME,
            "questions": out_dir / QUESTIONS_FILENAME, "training_pictures": len(captions),
            "held_out_questions": len(questions), "held_out_repeats_skipped": skipped}


def _held_out_questions(out_dir: Path, per_category: int, seen: set[str], seed: int) -> tuple[list[dict], int]:
    rng = random.Random(f"study-held-out-{seed}")  # a stream of its own: not the training pictures'
    lines, skipped = [], 0
    for group, categories in GROUPS.items():
        for index in range(per_category):
            scene = random_study_scene(rng, group)
            image = scene.render()
            while (digest := pixel_hash(image)) in seen:  # coarse pictures repeat often: only 1512 exist
                skipped += 1
                if skipped > MAX_HELD_OUT_REPEATS:
                    raise UsageError(f"{skipped} held-out pictures repeated training or earlier held-out pictures "
                                     f"(the {group} group ran out of new ones); lower --scenes-per-group or "
                                     "--questions-per-category, with a new --out folder.")
                scene = random_study_scene(rng, group)
                image = scene.render()
            seen.add(digest)  # every held-out picture is new, so the intervals count distinct pictures
            path = f"images/eval_{group}_{index:05d}.png"
            image.save(out_dir / path, compress_level=1)
            for category in categories:
                question, answer = scene.questions()[category]
                lines.append({"question_id": f"{group}-{index:05d}-{category}", "image": path, "text": question,
                              "category": category, "group": group, "answer": answer})
    with open(out_dir / QUESTIONS_FILENAME, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)
    return lines, skipped
