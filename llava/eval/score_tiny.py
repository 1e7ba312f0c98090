"""`python -m llava.eval.score_tiny`: accuracy per category on the tiny dataset's held-out split.

    python -m llava.eval.score_tiny --model-path CKPT [--model-base BASE]     # answer, then score
    python -m llava.eval.score_tiny --answers-file answers.jsonl             # score model_vqa's answers

The split (`llava.tiny.eval_split`, written by `python -m llava.tiny` to `playground/tiny/eval`) asks
scenes never used in training about background colour, shape, object colour, count, position, text
present and text reading. With `--model-path` the questions are answered greedily by
`llava.eval.model_vqa` into `--answers-file` (default `<model>/tiny_eval_answers.jsonl`; a re-run
reuses the answers there). Scoring is normalised exact match: case, surrounding punctuation and
spaces, a leading article and number words are ignored ("a circle." = "Circle", "three" = "3").
The table gives each category's accuracy with a 95% Wilson interval; `--json` writes it too. A
question without an answer counts as wrong and is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys

from llava.errors import DamagedInputError, UsageError, require_path, run_main
from llava.tiny.build import DEFAULT_TINY_DIR
from llava.tiny.eval_split import QUESTIONS_FILENAME
from llava.tiny.images import EVAL_CATEGORIES

logger = logging.getLogger(__name__)

DEFAULT_QUESTIONS = DEFAULT_TINY_DIR / "eval" / QUESTIONS_FILENAME
NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}


def normalise(text: str) -> str:
    """Lower case, no surrounding punctuation or spaces, no leading article, number words as digits."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(NUMBER_WORDS.get(word, word) for word in words)


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion (Wilson score), sound near 0 and 1."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def read_jsonl(path: str, what: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DamagedInputError(f"{what} {path} line {number} is not valid JSON ({error.msg}).") from error
    return records


def score(questions: list[dict], answers: list[dict], categories=EVAL_CATEGORIES, key: str = "category") -> dict:
    """{category: {questions, correct, accuracy, ci95}} plus the unanswered question ids; a question's
    category is its `key` field (the small-scale study also scores by "group")."""
    replies = {json.dumps(answer.get("question_id")): answer.get("text", "") for answer in answers}
    result, unanswered = {}, []
    for category in categories:
        asked = [q for q in questions if q.get(key) == category]
        correct = 0
        for question in asked:
            reply = replies.get(json.dumps(question["question_id"]))
            if reply is None:
                unanswered.append(question["question_id"])
                continue
            correct += normalise(reply) == normalise(question["answer"])
        low, high = wilson_interval(correct, len(asked))
        result[category] = {"questions": len(asked), "correct": correct,
                            "accuracy": correct / len(asked) if asked else None, "ci95": [low, high]}
    return {"categories": result, "unanswered": unanswered}


def format_table(result: dict) -> str:
    lines = ["| category | questions | correct | accuracy | 95% interval |", "| --- | ---: | ---: | ---: | ---: |"]
    for category, row in result["categories"].items():
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        low, high = row["ci95"]
        lines.append(f"| {category} | {row['questions']} | {row['correct']} | {accuracy} | "
                     f"{100 * low:.1f}-{100 * high:.1f}% |")
    if result["unanswered"]:
        lines.append(f"\n{len(result['unanswered'])} questions have no answer (counted wrong), e.g. "
                     f"{', '.join(map(str, result['unanswered'][:5]))}.")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Accuracy per category on the tiny held-out evaluation split.")
    parser.add_argument("--model-path", default=None, help="answer the split with this checkpoint first")
    parser.add_argument("--model-base", default=None, help="for a LoRA folder: the model it was trained from")
    parser.add_argument("--question-file", default=str(DEFAULT_QUESTIONS), help="the split (default: %(default)s)")
    parser.add_argument("--answers-file", default=None,
                        help="model_vqa answers (default with --model-path: <model>/tiny_eval_answers.jsonl)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the scores to this JSON file")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_args(argv)


def check_args(args) -> None:
    if args.model_path is None and args.answers_file is None:
        raise UsageError("Give --model-path (answer and score) or --answers-file (score model_vqa's answers).")
    if not os.path.isfile(args.question_file):
        raise UsageError(f"--question-file {args.question_file} does not exist; build the split with "
                         "`python -m llava.tiny` or give the file.")
    if args.model_path is None:
        require_path(args.answers_file, "--answers-file", "file")
    if args.answers_file is None:
        args.answers_file = os.path.join(args.model_path, "tiny_eval_answers.jsonl")


def older_than_model(answers_file: str, model_path: str) -> bool:
    """Whether the model folder's config or weights were written after the answers file."""
    if not os.path.isdir(model_path):
        return False
    answered = os.path.getmtime(answers_file)
    return any(os.path.getmtime(entry.path) > answered for entry in os.scandir(model_path)
               if entry.is_file() and (entry.name == "config.json" or entry.name.endswith((".safetensors", ".bin"))))


def main(argv=None) -> int:
    """Answer (with --model-path) and score; problems raise `llava.errors.UserError` (see `run_main`)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(args)
    if args.model_path is not None:
        from llava.eval import model_vqa

        if os.path.isfile(args.answers_file) and older_than_model(args.answers_file, args.model_path):
            logger.warning("%s is older than the model in %s (retrained since): answering every question again.",
                           args.answers_file, args.model_path)
            os.remove(args.answers_file)
        elif os.path.isfile(args.answers_file):
            logger.warning("%s exists: its answers are reused and only missing questions are answered; delete it "
                           "to answer everything again.", args.answers_file)

        vqa_args = ["--model-path", args.model_path, "--question-file", args.question_file,
                    "--image-folder", os.path.dirname(os.path.abspath(args.question_file)),
                    "--answers-file", args.answers_file, "--temperature", "0", "--max_new_tokens", "16",
                    "--batch-size", str(args.batch_size), "--device", args.device]
        model_vqa.main(vqa_args + (["--model-base", args.model_base] if args.model_base else []))
    result = score(read_jsonl(args.question_file, "question file"), read_jsonl(args.answers_file, "answers file"))
    print(f"Held-out tiny split ({args.question_file}), answers {args.answers_file}:\n{format_table(result)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
