"""The tiny dataset's held-out evaluation split: new scenes, questions by category, gold answers.

`generate_eval_split(out_dir, training_images)` renders scenes from a random stream the training
data never draws from, drops any whose pixels equal a training picture (so no evaluated scene was
seen in training), and asks each scene one question per category it can answer, phrased as the
training questions are (`llava.tiny.images.category_questions`), until every category has
`per_category` questions. It writes `images/` and `questions.jsonl` in the question format of
`python -m llava.eval.model_vqa` plus two fields for scoring:

    {"question_id": "0007-shape", "image": "images/eval_0007.png", "text": "What shape is on the left?",
     "category": "shape", "answer": "A circle."}

`python -m llava.eval.score_tiny` answers and scores it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from llava.tiny.images import EVAL_CATEGORIES, category_questions, random_scene, render_scene

logger = logging.getLogger(__name__)

QUESTIONS_FILENAME = "questions.jsonl"
IMAGES_DIRNAME = "images"
PER_CATEGORY = 200
MAX_SCENES = 5000  # text appears in about half of the scenes: text reading fills last, near 2 * PER_CATEGORY


def _pixel_hash(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes() + repr(image.size).encode()).hexdigest()


def training_pixel_hashes(training_images: Path) -> set[str]:
    """Pixel hashes of every training picture (PNG files under `training_images`)."""
    hashes = set()
    for path in sorted(training_images.glob("*.png")):
        with Image.open(path) as image:
            hashes.add(_pixel_hash(image))
    return hashes


def generate_eval_split(out_dir: str | Path, training_images: str | Path, per_category: int = PER_CATEGORY,
                        seed: int = 0) -> dict:
    """Write the split under `out_dir`; returns its facts (scenes, questions per category, skipped)."""
    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIRNAME).mkdir(parents=True, exist_ok=True)
    seen = training_pixel_hashes(Path(training_images))
    rng = random.Random(f"tiny-eval-split-{seed}")  # a stream of its own: not the training scenes'
    counts = dict.fromkeys(EVAL_CATEGORIES, 0)
    lines, scenes, duplicates = [], 0, 0
    progress = tqdm(total=per_category * len(EVAL_CATEGORIES), desc="tiny eval split", unit="question", leave=False)
    while min(counts.values()) < per_category:
        if scenes + duplicates >= MAX_SCENES:
            raise RuntimeError(f"{MAX_SCENES} scenes did not give {per_category} questions in every category: {counts}")
        scene = random_scene(rng)
        image = render_scene(scene)
        questions = category_questions(scene, rng)
        if _pixel_hash(image) in seen:
            duplicates += 1
            continue
        wanted = {category: qa for category, qa in questions.items() if counts[category] < per_category}
        if not wanted:
            continue
        relative = f"{IMAGES_DIRNAME}/eval_{scenes:05d}.png"
        image.save(out_dir / relative)
        for category, (question, answer) in wanted.items():
            lines.append({"question_id": f"{scenes:05d}-{category}", "image": relative, "text": question,
                          "category": category, "answer": answer})
            counts[category] += 1
            progress.update()
        scenes += 1
    progress.close()
    with open(out_dir / QUESTIONS_FILENAME, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)
    logger.info("Wrote the held-out evaluation split: %d scenes, %d questions (%s) to %s", scenes, len(lines),
                ", ".join(f"{category} {count}" for category, count in counts.items()), out_dir)
    return {"scenes": scenes, "questions": len(lines), "per_category": counts, "training_duplicates": duplicates}
