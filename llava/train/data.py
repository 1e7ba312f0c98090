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
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import load_image, process_images
from llava.train.preprocess import tokenize_conversation

logger = logging.getLogger(__name__)


def load_records(data_path: str) -> list[dict]:
    """Records from one or more comma-separated `.json` (a list) or `.jsonl` (one per line) files."""
    records = []
    for path in [p.strip() for p in data_path.split(",") if p.strip()]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Data file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            if path.endswith(".jsonl"):
                for line_number, line in enumerate(handle, start=1):
                    if line.strip():
                        records.append(_parse_json(line, path, line_number))
            else:
                loaded = _parse_json(handle.read(), path, None)
                if not isinstance(loaded, list):
                    raise ValueError(f"{path} must hold a JSON list of records (or use .jsonl, one per line).")
                records.extend(loaded)
        logger.info("Read %s (%d records so far)", path, len(records))
    return records


def _parse_json(text: str, path: str, line_number: int | None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {line_number}" if line_number else f"line {error.lineno}"
        raise ValueError(f"{path}, {where}: invalid JSON ({error.msg}).") from error


def record_images(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def _text_length(record: dict) -> int:
    return sum(len(turn.get("value", "").split()) for turn in record.get("conversations", []))


class LazySupervisedDataset(Dataset):
    """LLaVA records tokenised and image-processed on access."""

    def __init__(self, records: list[dict], tokenizer, image_processor, model_config, template: str,
                 image_folder: str | None, model_max_length: int, tokens_per_crop: int):
        self.records = records
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_config = model_config
        self.template = template
        self.image_folder = image_folder or ""
        self.model_max_length = model_max_length
        self.tokens_per_crop = tokens_per_crop
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """Rough lengths, negative for text-only records (LLaVA's grouping convention)."""
        return [(_text_length(r) + 128 * len(record_images(r))) * (1 if record_images(r) else -1) for r in self.records]

    def __getitem__(self, index: int) -> dict:
        """The sample at `index`; an unusable record is skipped (one warning naming it and why)
        and the next one is used, so one bad record does not end a long run."""
        for offset in range(len(self.records)):
            record_index = (index + offset) % len(self.records)
            try:
                return self._load(record_index)
            except (ValueError, OSError) as error:
                self.num_skipped += 1
                record_id = self.records[record_index].get("id", record_index) if isinstance(self.records[record_index], dict) else record_index
                logger.warning("Skipping record %r: %s", record_id, error)
        raise ValueError("No record of the dataset can be used; see the warnings above.")

    def _load(self, index: int) -> dict:
        record = self.records[index]
        paths = record_images(record)
        placeholders = count_image_placeholders(record)
        if placeholders != len(paths):
            raise ValueError(
                f"Record {record.get('id', index)!r} has {placeholders} '{DEFAULT_IMAGE_TOKEN}' placeholder(s) "
                f"but {len(paths)} image(s); put one '{DEFAULT_IMAGE_TOKEN}' in the human turns per image."
            )
        input_ids, labels = tokenize_conversation(record["conversations"], self.tokenizer, self.template, bool(paths))
        images = [load_image(os.path.join(self.image_folder, path)) for path in paths]
        pixels = []
        if images:
            processed = process_images(images, self.image_processor, self.model_config)
            pixels = list(processed) if isinstance(processed, torch.Tensor) else processed
        input_ids, labels, pixels = self._truncate(input_ids, labels, pixels, record)
        return {"input_ids": input_ids, "labels": labels, "images": pixels,
                "image_sizes": [image.size for image in images][: len(pixels)], "id": record.get("id", str(index))}

    def _truncate(self, input_ids, labels, pixels, record):
        """Cut to `model_max_length` expanded tokens; an image that does not fit whole is dropped
        with everything after it."""
        crop_sizes = [p.shape[0] if p.ndim == 4 else 1 for p in pixels]
        sizes = torch.ones_like(input_ids)
        image_slots = (input_ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
        for slot, crops in zip(image_slots.tolist(), crop_sizes):
            sizes[slot] = crops * (self.tokens_per_crop + 1)
        fits = sizes.cumsum(0) <= self.model_max_length
        if bool(fits.all()):
            return input_ids, labels, pixels
        keep = int(fits.long().sum())
        kept_images = int((input_ids[:keep] == IMAGE_TOKEN_INDEX).sum())
        if bool((labels[:keep] != IGNORE_INDEX).sum() == 0):
            raise ValueError(
                f"Record {record.get('id')!r}: nothing supervised is left after truncation to "
                f"{self.model_max_length} tokens (images expand to {self.tokens_per_crop + 1} per crop); "
                "raise --model_max_length or shorten the record."
            )
        logger.warning("Record %r truncated to %d tokens (%d of %d images kept)", record.get("id"),
                       self.model_max_length, kept_images, len(pixels))
        return input_ids[:keep], labels[:keep], pixels[:kept_images]


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads `input_ids` (pad id) and `labels` (IGNORE_INDEX); images listed in batch order."""

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
        result = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if images:
            result["images"] = images
            result["image_sizes"] = image_sizes
        return result


def count_image_placeholders(record: dict) -> int:
    return sum(turn.get("value", "").count(DEFAULT_IMAGE_TOKEN) for turn in record.get("conversations", []))
