"""Training data: LLaVA's JSON / JSONL records, loaded lazily, tokenised and collated.

A record is `{"id", "image": "a.png" | ["a.png", "b.png"] (optional), "conversations": [...]}`.
`LazySupervisedDataset` tokenises one record when it is read (labels only on assistant turns, via
`llava.train.preprocess`), loads and AnyRes-processes its images, and truncates to
`model_max_length` counting every image at its expanded size, never cutting through an image.
`DataCollatorForSupervisedDataset` right-pads a batch and lists its images in order.
"""

import json
import logging
import os
import random
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.errors import DamagedInputError, UsageError, require_path
from llava.mm_utils import ImageTooLargeError, load_image, process_images
from llava.train.record_checks import (
    BadRecord,
    check_image_size,
    check_record,
    record_id,
    record_image_paths,
    tokenize_record,
)

logger = logging.getLogger(__name__)
MAX_REPLACEMENT_ATTEMPTS = 50


@dataclass
class FileProblem:
    """A part of a data file that holds no usable record (e.g. a JSON syntax error)."""

    kind: str
    where: str  # "file, line N"
    message: str


def read_records(path: str) -> tuple[list, list[FileProblem]]:
    """Records of one `.json` (a list) or `.jsonl` (one per line) file, and the lines that failed.

    Bytes that are not UTF-8 are kept as lone surrogates, so `check_record` reports the record
    (`non_utf8_text`) instead of the whole file failing to decode. A path that is not there or not a
    file is a UsageError naming --data_path; a `.json` file that is not a list a DamagedInputError.
    """
    require_path(path, "--data_path", "file")
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        if path.endswith(".jsonl"):
            records, problems = [], []
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    problems.append(FileProblem("json_syntax", f"{path}, line {line_number}", error.msg))
            return records, problems
        text = handle.read()
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        return [], [FileProblem("json_syntax", f"{path}, line {error.lineno}", error.msg)]
    if not isinstance(loaded, list):
        raise DamagedInputError(f"data file {path} holds a JSON {type(loaded).__name__}, not a list of records; "
                                "put the records in a JSON list (or use .jsonl, one record per line).")
    return loaded, []


def data_files(data_path: str) -> list[str]:
    """The comma-separated file names of `--data_path`; none at all is a UsageError."""
    paths = [path.strip() for path in str(data_path).split(",") if path.strip()]
    if not paths:
        raise UsageError(f"--data_path {data_path!r} names no file; give LLaVA .json / .jsonl files, comma-separated.")
    return paths


def load_records(data_path: str, max_bad_fraction: float = 1.0) -> list:
    """Records from comma-separated `.json` / `.jsonl` files. A JSONL line that is not JSON is
    skipped with a warning; a `.json` file that is not JSON cannot be used and raises
    (DamagedInputError), and so do files that hold no record at all: nothing to train on."""
    records, skipped_lines = [], 0
    for path in data_files(data_path):
        file_records, problems = read_records(path)
        for problem in problems:
            if not path.endswith(".jsonl"):
                raise DamagedInputError(f"{problem.where}: invalid JSON ({problem.message}); "
                                        "run python -m llava.train.check_data to list every problem.")
            logger.warning("Skipping %s: invalid JSON (%s)", problem.where, problem.message)
        skipped_lines += len(problems)
        records.extend(file_records)
        logger.info("Read %s (%d records so far)", path, len(records))
    total = len(records) + skipped_lines
    if skipped_lines and skipped_lines > max_bad_fraction * total:
        raise DamagedInputError(f"{skipped_lines} of {total} data lines are not valid JSON, more than "
                                f"--max_bad_sample_fraction {max_bad_fraction:g}; run python -m llava.train.check_data.")
    if not records:
        raise DamagedInputError(f"--data_path {data_path} holds no records: nothing to train on; give files with "
                                "LLaVA records (a JSON list, or one JSON object per line in .jsonl).")
    return records


def _text_length(record) -> int:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return 1
    return sum(len(str(turn.get("value", "")).split()) for turn in record["conversations"] if isinstance(turn, dict))


def _image_count(record) -> int:
    return len(record_image_paths(record)) if isinstance(record, dict) else 0


def tokens_kept(input_ids: torch.Tensor, labels: torch.Tensor, image_token_counts: list[int],
                model_max_length: int) -> int:
    """How many of `input_ids` fit in `model_max_length` when each image placeholder expands to its
    count (an image that does not fit whole is dropped with everything after it). Raises
    BadRecord('truncated_away') when no supervised token is left."""
    sizes = torch.ones_like(input_ids)
    image_slots = (input_ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
    for slot, count in zip(image_slots.tolist(), image_token_counts):
        sizes[slot] = count
    keep = int((sizes.cumsum(0) <= model_max_length).long().sum())
    if bool((labels[:keep] != IGNORE_INDEX).sum() == 0):
        raise BadRecord(
            "truncated_away",
            f"nothing supervised is left after truncation to {model_max_length} tokens (images expand to "
            f"{image_token_counts} tokens); raise --model_max_length or shorten the record",
        )
    return keep


class LazySupervisedDataset(Dataset):
    """LLaVA records tokenised and image-processed on access.

    An unusable record is skipped (one warning naming its id and the reason) and the next usable
    one is returned in its place; the sample lists the unusable record asked for under `"skipped"`
    (so each bad record counts once per epoch, when its own index is read), and the trainer counts
    skips in the main process even when DataLoader workers do the loading.
    """

    def __init__(self, records: list, tokenizer, image_processor, model_config, template: str,
                 image_folder: str | None, model_max_length: int, tokens_per_crop: int):
        self.records = records
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_config = model_config
        self.template = template
        self.image_folder = image_folder or ""
        self.model_max_length = model_max_length
        self.tokens_per_crop = tokens_per_crop
        self.num_skipped = 0  # in this process only; the trainer keeps the run's count
        self._warned: set[str] = set()
        self._bad: dict[int, str] = {}  # index -> problem kind, for records found unusable in this process

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """Rough lengths, negative for text-only records (LLaVA's grouping convention)."""
        return [(_text_length(r) + 128 * _image_count(r)) * (1 if _image_count(r) else -1) for r in self.records]

    def __getitem__(self, index: int) -> dict:
        """The sample at `index`; a bad record is counted, warned about once, and replaced by another
        record drawn at random (deterministically from `index`), so a run of bad records neither
        repeats one neighbour many times nor costs a scan through it."""
        skipped, draw = [], random.Random(index)
        record_index = index
        for attempt in range(MAX_REPLACEMENT_ATTEMPTS):
            kind = self._bad.get(record_index)
            if kind is None:
                try:
                    return {**self._load(record_index), "skipped": skipped}
                except BadRecord as error:
                    kind = self._bad[record_index] = error.kind
                    name = record_id(self.records[record_index], record_index)
                    if name not in self._warned:
                        self._warned.add(name)
                        logger.warning("Skipping record %s (%s): %s", name, error.kind, error)
            if attempt == 0:  # a record drawn as a replacement is counted when its own index is read
                self.num_skipped += 1
                skipped.append((record_id(self.records[record_index], record_index), kind))
            record_index = draw.randrange(len(self.records))
        raise ValueError(f"{MAX_REPLACEMENT_ATTEMPTS} records in a row could not be used; most of the data is "
                         "bad: run python -m llava.train.check_data.")

    def _load(self, index: int) -> dict:
        record = self.records[index]
        check_record(record)
        input_ids, labels = tokenize_record(record, self.tokenizer, self.template)
        paths = record_image_paths(record)
        images = [self._load_image(path) for path in paths]
        pixels = []
        if images:
            processed = process_images(images, self.image_processor, self.model_config)
            pixels = list(processed) if isinstance(processed, torch.Tensor) else processed
        input_ids, labels, pixels = self._truncate(input_ids, labels, pixels, record)
        return {"input_ids": input_ids, "labels": labels, "images": pixels,
                "image_sizes": [image.size for image in images][: len(pixels)], "id": record_id(record, index)}

    def _load_image(self, path: str):
        full_path = os.path.join(self.image_folder, path)
        if os.path.isfile(full_path) and os.path.getsize(full_path) == 0:
            raise BadRecord("empty_image", f"{full_path} has zero bytes")
        try:
            image = load_image(full_path)
        except FileNotFoundError as error:
            raise BadRecord("missing_image", str(error)) from error
        except ImageTooLargeError as error:
            raise BadRecord("decompression_bomb", str(error)) from error
        except ValueError as error:
            raise BadRecord("unreadable_image", str(error)) from error
        check_image_size(image.width, image.height, full_path)
        return image

    def _truncate(self, input_ids, labels, pixels, record):
        """Cut to `model_max_length` expanded tokens (see `tokens_kept`)."""
        counts = [(p.shape[0] if p.ndim == 4 else 1) * (self.tokens_per_crop + 1) for p in pixels]
        keep = tokens_kept(input_ids, labels, counts, self.model_max_length)
        if keep == input_ids.shape[0]:
            return input_ids, labels, pixels
        kept_images = int((input_ids[:keep] == IMAGE_TOKEN_INDEX).sum())
        logger.warning("Record %r truncated to %d tokens (%d of %d images kept)", record.get("id"),
                       self.model_max_length, kept_images, len(pixels))
        return input_ids[:keep], labels[:keep], pixels[:kept_images]


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads `input_ids` (pad id) and `labels` (IGNORE_INDEX); images listed in batch order.
    `ids` (the batch's record ids) and `skipped` ((id, kind) of records skipped to fill it) ride
    along for the trainer, which removes them before the forward pass."""

    pad_token_id: int

    def __call__(self, instances: list[dict]) -> dict:
        length = max(item["input_ids"].shape[0] for item in instances)
        batch = len(instances)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        images, image_sizes = [], []
        for row, item in enumerate(instances):
            size = item["input_ids"].shape[0]
            input_ids[row, :size] = item["input_ids"]
            labels[row, :size] = item["labels"]
            attention_mask[row, :size] = 1
            images += item["images"]
            image_sizes += item["image_sizes"]
        result = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
                  "ids": [item.get("id") for item in instances],
                  "skipped": [entry for item in instances for entry in item.get("skipped", [])]}
        if images:
            result["images"] = images
            result["image_sizes"] = image_sizes
        return result
