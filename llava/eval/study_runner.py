"""Answer and score the small-scale study's held-out questions with every method (`study_methods`).

Each method loads its checkpoint with the method's config (`customized_config`, as lmms-eval passes
one), answers greedily in batches with `model_vqa`'s `Answerer` into `<answers_dir>/<method>.jsonl`
(a re-run answers only what is missing), and is scored per category and per group with
`score_tiny`'s normalised exact match and 95% Wilson intervals. Prefill FLOPs are counted for the
first held-out question's text length and crops.
"""

from __future__ import annotations

import json
import logging
import re
from argparse import Namespace
from pathlib import Path

from transformers import AutoConfig

from llava.errors import DamagedInputError
from llava.model.builder import load_pretrained_model
from llava.serve.inference import default_conv_mode
from llava.tiny.study_data import GROUPS, QUESTIONS_FILENAME

from .model_vqa import Answerer, answer_questions, answered_ids, read_questions
from .score_tiny import older_than_model, read_jsonl, score
from .study_methods import method_config, method_prefill_flops, study_methods

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 8  # the longest answer ("A triangle.") is 4 tokens


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _answer(method, config, checkpoint: Path, data: Path, questions: list, answers_file: Path,
            options: Namespace) -> tuple[int, int]:
    """Answer the `questions` (`model_vqa.read_questions`) that `answers_file` lacks with `method`, whose
    model is `checkpoint` built with `config`; returns (text tokens, crops) of the first question for the
    FLOP count. `options` carries `batch_size` and `device`."""
    tokenizer, model, processor, context_len = load_pretrained_model(
        str(checkpoint), None, None, device=options.device, customized_config=config if method.overrides else None)
    tokenizer.padding_side = "left"
    answering = Namespace(temperature=0.0, max_new_tokens=MAX_NEW_TOKENS, top_p=None, num_beams=1,
                          image_folder=str(data))
    answerer = Answerer(tokenizer, model, processor, context_len, default_conv_mode(model.config, tokenizer), answering)
    questions_file = data / QUESTIONS_FILENAME
    input_ids, pixels, _ = answerer.prepare(questions[0])
    if answers_file.exists() and (older_than_model(str(answers_file), str(checkpoint))
                                  or answers_file.stat().st_mtime < questions_file.stat().st_mtime):
        logger.info("%s: %s is older than the model in %s or the questions in %s; answering again", method.name,
                    answers_file, checkpoint, questions_file)
        answers_file.unlink()
    done = answered_ids(str(answers_file))
    todo = [question for question in questions if json.dumps(question.question_id) not in done]
    if todo:
        logger.info("%s: answering %d held-out questions", method.name, len(todo))
        skipped = answer_questions(answerer, todo, str(answers_file), method.name, options.batch_size)
        if skipped:
            raise DamagedInputError(f"{method.name}: {len(skipped)} study questions were skipped (the warnings above "
                                    f"say why), e.g. {', '.join(skipped[:5])}; re-run the study to retry them.")
    return int(input_ids.numel()) - 1, int(pixels.shape[0])


def evaluate_methods(checkpoints: dict[str, Path], data: Path, answers_dir: Path, mask_fractions,
                     options: Namespace) -> dict:
    """{"methods": [one row per method], "prompt": {text_tokens, crops}} for the study's report.

    `options` carries `batch_size` and `device` (as `llava.serve.inference.check_device` resolved it)."""
    answers_dir.mkdir(parents=True, exist_ok=True)
    baseline_config = AutoConfig.from_pretrained(checkpoints["baseline"])
    tower = baseline_config.mm_vision_tower_config
    tokens_per_crop = (tower["image_size"] // tower["patch_size"]) ** 2
    questions = read_jsonl(str(data / QUESTIONS_FILENAME), "study question file")  # for scoring
    to_answer = read_questions(str(data / QUESTIONS_FILENAME))  # the same lines, as model_vqa asks them
    categories = [category for members in GROUPS.values() for category in members]
    rows, prompt = [], None
    for method in study_methods(baseline_config.num_hidden_layers, tokens_per_crop, mask_fractions):
        checkpoint = checkpoints[method.checkpoint]
        answers_file = answers_dir / f"{_slug(method.name)}.jsonl"
        config = method_config(AutoConfig.from_pretrained(checkpoint), method)
        text_tokens, crops = _answer(method, config, checkpoint, data, to_answer, answers_file, options)
        prompt = prompt or {"text_tokens": text_tokens, "crops": crops}
        answers = read_jsonl(str(answers_file), "answers file")
        rows.append({"name": method.name, "kind": method.kind, "checkpoint": str(checkpoint),
                     "answers_file": str(answers_file),
                     "overrides": method.overrides, "masked_fraction": method.masked_fraction,
                     **method_prefill_flops(config, prompt["text_tokens"], prompt["crops"]),
                     "categories": score(questions, answers, categories)["categories"],
                     "groups": score(questions, answers, list(GROUPS), key="group")["categories"]})
        logger.info("%s: %s", method.name, ", ".join(f"{group} {100 * row['accuracy']:.1f}%"
                                                     for group, row in rows[-1]["groups"].items()))
    return {"methods": rows, "prompt": prompt}
