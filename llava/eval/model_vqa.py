"""`python -m llava.eval.model_vqa`: answer a question file in batches, as LLaVA's `model_vqa` does.

    python -m llava.eval.model_vqa --model-path CKPT [--model-base BASE] --question-file q.jsonl \\
        --image-folder DIR --answers-file a.jsonl [--conv-mode] [--temperature 0] [--top_p] \\
        [--num_beams 1] [--max_new_tokens 128] [--batch-size 8] [--num-chunks K --chunk-idx I]

Question lines are `{"question_id", "image", "text"}` (`image` relative to `--image-folder`, or
absent for a text-only question); answer lines `{"question_id", "prompt", "text", "answer_id",
"model_id", "metadata"}`, `prompt` being the question's text as LLaVA writes it. `--num-chunks` /
`--chunk-idx` split the questions into K consecutive chunks (LLaVA's rule) so K processes or GPUs
each answer one. Questions are batched with left padding; greedy answers equal one-at-a-time ones.

Re-running with the same answers file continues: question ids already answered there are skipped.
A question line that is not valid is an error naming the file and line; a question whose image is
missing or unreadable, or whose prompt does not fit the context, is skipped with a warning naming
it, and the run ends with an error counting them (their answers are missing, so a re-run retries them).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import uuid
from dataclasses import dataclass

import torch
from tqdm import tqdm

from llava.conversation import get_conv_template
from llava.errors import DamagedInputError, UsageError, UserError, one_line, require_path, run_main
from llava.eval.run_llava import build_prompt
from llava.mm_utils import tokenizer_image_token
from llava.serve.inference import (
    add_answering_options,
    check_answering_options,
    check_context_length,
    default_conv_mode,
    generation_kwargs,
    load_images,
    load_model,
    pixels_for_model,
    prompt_length,
    stop_string,
)

logger = logging.getLogger(__name__)


@dataclass
class Question:
    question_id: object  # LLaVA's files use ints or strings
    text: str
    image: str | None


def split_chunks(items: list, num_chunks: int) -> list[list]:
    """LLaVA's split: consecutive chunks of ceil(n / k) items (the last ones may be shorter or empty)."""
    size = math.ceil(len(items) / num_chunks) if items else 1
    return [items[i * size : (i + 1) * size] for i in range(num_chunks)]


def read_questions(path: str) -> list[Question]:
    """The question file's lines; a line that is not a question object is a DamagedInputError naming it."""
    questions = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"question file {path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DamagedInputError(f"{where} is not valid JSON ({error.msg}); fix or remove the line.") from error
            if not isinstance(record, dict) or "question_id" not in record or not isinstance(record.get("text"), str):
                raise DamagedInputError(f"{where} is not a question: it needs \"question_id\" and a \"text\" string "
                                        "(and \"image\" for an image question).")
            image = record.get("image")
            if image is not None and not isinstance(image, str):
                raise DamagedInputError(f"{where}: \"image\" must be one file name relative to --image-folder.")
            questions.append(Question(record["question_id"], record["text"], image))
    return questions


def answered_ids(path: str) -> set[str]:
    """Question ids (as JSON text) already in the answers file; a damaged line is an error naming it."""
    if not os.path.isfile(path):
        return set()
    done = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                done.add(json.dumps(json.loads(line)["question_id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise DamagedInputError(f"answers file {path} line {number} is not an answer line; remove it (or "
                                        "the file) to answer that question again.") from error
    return done


class Answerer:
    """A loaded model answering batches of questions with one generation setting."""

    def __init__(self, tokenizer, model, image_processor, context_len: int, conv_mode: str, args):
        self.tokenizer, self.model, self.image_processor = tokenizer, model, image_processor
        self.context_len, self.conv_mode = context_len, conv_mode
        self.generate_kwargs = generation_kwargs(tokenizer, args.temperature, args.max_new_tokens, args.top_p,
                                                 args.num_beams)
        self.stop = stop_string(get_conv_template(conv_mode))
        self.image_folder = args.image_folder

    def prepare(self, question: Question):
        """(input_ids [L], pixels [C, 3, S, S] or None, image size or None) for one question."""
        images = load_images(os.path.join(self.image_folder, question.image), "image") if question.image else []
        input_ids = tokenizer_image_token(build_prompt(question.text, len(images), self.conv_mode), self.tokenizer,
                                          return_tensors="pt")
        pixels = pixels_for_model(images, self.image_processor, self.model) if images else None
        sizes = [image.size for image in images] if images else None
        check_context_length(prompt_length(input_ids, pixels, self.model, sizes), self.generate_kwargs["max_new_tokens"],
                             self.context_len, "Shorten the question or lower --max_new_tokens.",
                             what=f"question {question.question_id}", option="--max_new_tokens")
        return input_ids, (pixels[0] if pixels is not None else None), (images[0].size if images else None)

    @torch.inference_mode()
    def generate(self, prepared: list) -> list[str]:
        """Answers for prepared questions; image and text-only questions are batched separately."""
        replies = [""] * len(prepared)
        for with_image in (True, False):
            members = [i for i, (_, pixels, _) in enumerate(prepared) if (pixels is not None) == with_image]
            if members:
                for index, reply in zip(members, self._generate([prepared[i] for i in members]), strict=True):
                    replies[index] = reply
        return replies

    def _generate(self, prepared: list) -> list[str]:
        length = max(ids.shape[0] for ids, _, _ in prepared)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(prepared), length), pad, dtype=torch.long)  # [B, L], padded on the left
        attention_mask = torch.zeros_like(input_ids)
        for row, (ids, _, _) in enumerate(prepared):
            input_ids[row, length - ids.shape[0] :] = ids
            attention_mask[row, length - ids.shape[0] :] = 1
        has_images = prepared[0][1] is not None
        output_ids = self.model.generate(
            input_ids.to(self.model.device), attention_mask=attention_mask.to(self.model.device),
            images=[pixels for _, pixels, _ in prepared] if has_images else None,
            image_sizes=[size for _, _, size in prepared] if has_images else None, **self.generate_kwargs)
        return [self._clean(self.tokenizer.decode(ids, skip_special_tokens=True)) for ids in output_ids]

    def _clean(self, text: str) -> str:
        text = text.strip()
        if self.stop and self.stop.strip() and self.stop.strip() in text:
            text = text[: text.index(self.stop.strip())].strip()
        return text


def answer_questions(answerer: Answerer, questions: list[Question], answers_file: str, model_id: str,
                     batch_size: int) -> list[str]:
    """Answer `questions` batch by batch, appending each answer line as it comes; returns the skips."""
    skipped = []
    with open(answers_file, "a", encoding="utf-8") as out, tqdm(total=len(questions), desc="answering",
                                                                 unit="question") as progress:
        for start in range(0, len(questions), batch_size):
            batch, prepared = [], []
            for question in questions[start : start + batch_size]:
                try:
                    prepared.append(answerer.prepare(question))
                    batch.append(question)
                except UserError as error:
                    logger.warning("Skipping question %s: %s", question.question_id, one_line(error))
                    skipped.append(str(question.question_id))
            for question, reply in zip(batch, answerer.generate(prepared) if prepared else [], strict=True):
                record = {"question_id": question.question_id, "prompt": question.text, "text": reply,
                          "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": {}}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            progress.update(len(questions[start : start + batch_size]))
    return skipped


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Answer a LLaVA question file (JSONL) with a LLaVA / ProxyV model.")
    parser.add_argument("--model-path", required=True, help="checkpoint folder or hub name")
    parser.add_argument("--model-base", default=None, help="for a stage-1 or LoRA folder: the model it was trained from")
    parser.add_argument("--question-file", required=True, help='JSONL: {"question_id", "image", "text"} per line')
    parser.add_argument("--image-folder", default="", help="folder the questions' image names are relative to")
    parser.add_argument("--answers-file", required=True, help="JSONL to append the answers to (resumes)")
    add_answering_options(parser, max_new_tokens=128)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument("--num-chunks", "--num_chunks", dest="num_chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", "--chunk_idx", dest="chunk_idx", type=int, default=0)
    return parser.parse_args(argv)


def check_args(args) -> None:
    """Every option before anything loads: a UsageError naming the option."""
    check_answering_options(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.num_chunks < 1:
        raise UsageError(f"--num-chunks must be >= 1 (the number of parts the question file is split into), got "
                         f"{args.num_chunks}.")
    if not 0 <= args.chunk_idx < args.num_chunks:
        raise UsageError(f"--chunk-idx must be in [0, --num-chunks), got {args.chunk_idx} of {args.num_chunks}.")
    require_path(args.question_file, "--question-file", "file")
    if args.image_folder:
        require_path(args.image_folder, "--image-folder", "dir")
    if os.path.isdir(args.answers_file):
        raise UsageError(f"--answers-file {args.answers_file} is a folder; give a .jsonl file path.")


def main(argv=None) -> int:
    """Answer the chunk's unanswered questions; problems raise `llava.errors.UserError` (see `run_main`)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(args)
    chunk = split_chunks(read_questions(args.question_file), args.num_chunks)[args.chunk_idx]
    done = answered_ids(args.answers_file)
    todo = [q for q in chunk if json.dumps(q.question_id) not in done]
    logger.info("%d questions in chunk %d of %d; %d already answered in %s, %d to answer", len(chunk),
                args.chunk_idx, args.num_chunks, len(chunk) - len(todo), args.answers_file, len(todo))
    if not todo:
        return 0
    tokenizer, model, image_processor, context_len = load_model(args.model_path, args.model_base, args.device,
                                                                args.attn_implementation)
    conv_mode = args.conv_mode or default_conv_mode(model.config, tokenizer)
    os.makedirs(os.path.dirname(os.path.abspath(args.answers_file)), exist_ok=True)
    tokenizer.padding_side = "left"
    answerer = Answerer(tokenizer, model, image_processor, context_len, conv_mode, args)
    model_id = os.path.basename(os.path.normpath(args.model_path))
    skipped = answer_questions(answerer, todo, args.answers_file, model_id, args.batch_size)
    if skipped:
        raise DamagedInputError(f"{len(skipped)} of {len(todo)} questions were skipped (the warnings above say why), "
                                f"e.g. {', '.join(skipped[:5])}; fix them and re-run to answer only those.")
    logger.info("Wrote %d answers to %s", len(todo), args.answers_file)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
