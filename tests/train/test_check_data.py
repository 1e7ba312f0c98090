"""The broken-data corpus through the pre-flight (`llava.train.check_data`), the training dataset,
the collator and the run guards (skip accounting, bad-fraction limit, NaN/inf loss)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.errors import TrainingStopped, run_main
from llava.mm_utils import process_anyres_image
from llava.model.language_model.llava_decoder import DEFAULT_GRID_PINPOINTS
from llava.train.check_data import TokenBudget, check_data, main
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, load_records
from llava.train.record_checks import BadRecord, check_image_file
from llava.train.run_guards import SkipTracker
from tests.broken_corpus import IMAGE_TOKENS, MODEL_MAX_LENGTH, write_broken_corpus

# At training time a record is judged lazily; the file-level kinds never reach the dataset.
FILE_LEVEL_KINDS = {"json_syntax"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_broken_corpus(tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})


def test_check_data_reports_every_kind_with_ids(corpus, tiny_tokenizer):
    budget = TokenBudget(tiny_tokenizer, "v1", MODEL_MAX_LENGTH, IMAGE_TOKENS)
    report = check_data(f"{corpus.json_path},{corpus.jsonl_path}", str(corpus.images), budget)
    assert dict(report.problems) == corpus.expected_problems
    assert report.notices["unusual_mode"] == corpus.expected_notices
    assert report.records == 24 + 3 and report.bad == sum(len(ids) for ids in corpus.expected_problems.values())
    # Without a tokenizer the truncation check is not made, everything else is.
    without_budget = check_data(str(corpus.json_path), str(corpus.images))
    assert "truncated_away" not in without_budget.problems


def test_check_data_cli_exit_status(corpus, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    args = ["--data_path", f"{corpus.json_path},{corpus.jsonl_path}", "--image_folder", str(corpus.images)]
    assert main([*args, "--report_json", str(report_path)]) == 1
    out = capsys.readouterr().out
    assert "NOT usable" in out and "decompression_bomb" in out and "bomb" in out
    assert json.loads(report_path.read_text())["problems"]["missing_image"] == ["missing_file"]
    assert main([*args, "--max_bad_sample_fraction", "1"]) == 0
    good = tmp_path / "good.json"
    good.write_text(json.dumps(json.loads(corpus.json_path.read_text())[:7]))
    assert main(["--data_path", str(good), "--image_folder", str(corpus.images), "--max_bad_sample_fraction", "0"]) == 0
    # A .json file that is not JSON: reported with its line; the training loader refuses it naming the line.
    assert main(["--data_path", str(corpus.broken_json_path)]) == 1
    assert f"{corpus.broken_json_path}, line 2" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"broken.json, line 2: invalid JSON"):
        load_records(str(corpus.broken_json_path))
    assert run_main(main, ["--data_path", str(tmp_path / "absent.json")]) == 2
    assert capsys.readouterr().err == f"error: --data_path {tmp_path / 'absent.json'} does not exist.\n"


def _dataset(corpus, tokenizer, processor, records):
    return LazySupervisedDataset(records, tokenizer, processor, SimpleNamespace(image_aspect_ratio="pad"), "v1",
                                 str(corpus.images), MODEL_MAX_LENGTH, IMAGE_TOKENS - 1)


def test_dataset_skips_each_bad_record_with_its_kind(corpus, tiny_tokenizer, processor, caplog):
    records = load_records(f"{corpus.json_path},{corpus.jsonl_path}")  # the JSONL syntax error is skipped here
    dataset = _dataset(corpus, tiny_tokenizer, processor, records)
    skipped, used = {}, []
    with caplog.at_level("WARNING", logger="llava.train.data"):
        for index in range(len(dataset)):
            sample = dataset[index]
            used.append(sample["id"])
            skipped.update(dict(sample["skipped"]))
    expected = {name.replace(str(corpus.json_path), ""): kind for kind, names in corpus.expected_problems.items()
                if kind not in FILE_LEVEL_KINDS for name in names}  # the dataset names an id-less record by index
    assert skipped == expected
    assert set(used) == {"ok_text", "ok_image", "mode_rgba", "mode_p", "mode_l", "mode_cmyk", "mode_16bit",
                         "jsonl_ok"}
    # One warning per bad record, naming it, however often it is passed over.
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping record")]
    assert len(warnings) == len(expected) and all(any(name in w for w in warnings) for name in expected)

    # Index 22 (truncated away) is replaced by a usable record drawn from its index: the same every time.
    batch = DataCollatorForSupervisedDataset(0)([dataset[0], dataset[1], dataset[22]])
    assert batch["ids"][:2] == ["ok_text", "ok_image"] and batch["ids"][2] in used
    assert dataset[22]["id"] == batch["ids"][2]
    assert batch["skipped"] == [("truncated_away", "truncated_away")]  # a drawn-over record counts at its own index
    assert batch["input_ids"].shape[0] == 3


def _reference_pixels(rgb: np.ndarray, processor) -> torch.Tensor:
    image = Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), tuple(int(x * 255) for x in processor.image_mean))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return processor.preprocess([square], return_tensors="pt")["pixel_values"][0]


def test_unusual_modes_convert_like_a_plain_reference(corpus, tiny_tokenizer, processor):
    records = json.loads(corpus.json_path.read_text())
    dataset = _dataset(corpus, tiny_tokenizer, processor, records)
    rgba = np.asarray(Image.open(corpus.images / "rgba.png")).astype(np.float64)
    alpha = rgba[..., 3:] / 255
    on_white = rgba[..., :3] * alpha + 255 * (1 - alpha)
    assert torch.allclose(dataset[2]["images"][0], _reference_pixels(on_white, processor), atol=1e-5)
    gray16 = np.asarray(Image.open(corpus.images / "gray16.png")).astype(np.float64)
    gray8 = np.clip(np.rint(gray16 / 257), 0, 255)
    expected = _reference_pixels(np.repeat(gray8[..., None], 3, axis=2), processor)
    assert torch.allclose(dataset[6]["images"][0], expected, atol=1e-5)
    for index in (3, 4, 5):  # P, L, CMYK: 3 channels of the right size
        assert dataset[index]["images"][0].shape == (3, 28, 28)


def test_skip_tracker_stops_on_too_many_bad_records_and_on_non_finite_loss():
    tracker = SkipTracker(dataset_size=100, max_fraction=0.02)
    tracker.add([("a", "missing_image"), ("b", "role_order")], torch.tensor(1.0), step=1, epoch=0, batch_ids=["c"])
    with pytest.raises(TrainingStopped, match=r"3 of 100 records were skipped .* --max_bad_sample_fraction 0.02"):
        tracker.add([("d", "empty_turn")], torch.tensor(1.0), step=2, epoch=0, batch_ids=["e"])
    assert "missing_image: 1" in tracker.summary() and "a, b, d" in tracker.summary()
    # A new epoch starts its own count.
    tracker.add([("a", "missing_image")], torch.tensor(1.0), step=3, epoch=1, batch_ids=["c"])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TrainingStopped, match=r"at step 7; this process's batch holds records \['x', 'y'\]"):
            tracker.add([], torch.tensor(bad), step=7, epoch=1, batch_ids=["x", "y"])
    with pytest.raises(ValueError, match="max_bad_sample_fraction"):
        SkipTracker(10, 1.5)


def test_pil_pixel_limit_warning_is_a_notice_and_error_a_bad_record(corpus, tiny_tokenizer, processor, monkeypatch):
    good = str(corpus.images / "good.png")  # 32x24 = 768 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 768 > 500: PIL warns, still decodes
    assert check_image_file(good).huge
    report = check_data(str(corpus.json_path), str(corpus.images))
    assert "ok_image (good.png: 32x24)" in report.notices["huge_image"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 768 > 2 * 300: PIL refuses it
    with pytest.raises(BadRecord) as error:
        check_image_file(good)
    assert error.value.kind == "decompression_bomb"
    records = json.loads(corpus.json_path.read_text())
    assert _dataset(corpus, tiny_tokenizer, processor, records)[1]["skipped"] == [("ok_image", "decompression_bomb")]


def test_a_run_of_bad_records_is_replaced_by_varied_records(corpus, tiny_tokenizer, processor):
    """20 bad records in a row are not all replaced by their one good neighbour."""
    good = [{"id": f"good{i}", "conversations": [{"from": "human", "value": f"Question {i}?"},
                                                 {"from": "gpt", "value": f"Answer {i}."}]} for i in range(20)]
    bad = [{"id": f"bad{i}"} for i in range(20)]  # no conversations
    dataset = _dataset(corpus, tiny_tokenizer, processor, bad + good)
    replacements = [dataset[index]["id"] for index in range(20)]
    assert all(name.startswith("good") for name in replacements)
    assert len(set(replacements)) >= 8, replacements
    assert dataset.num_skipped == 20


def test_anyres_budget_counts_the_crops_training_cuts(tiny_tokenizer):
    """The pre-flight expands an AnyRes image to as many crops as training's process_anyres_image makes."""
    processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    budget = TokenBudget(tiny_tokenizer, "v1", 4096, 577, DEFAULT_GRID_PINPOINTS, 336)
    for size in [(336, 336), (1008, 336), (600, 600), (300, 900), (800, 400)]:
        crops = process_anyres_image(Image.new("RGB", size), processor, DEFAULT_GRID_PINPOINTS).shape[0]
        assert budget.image_token_count(*size) == crops * 577, size
    assert TokenBudget(tiny_tokenizer, "v1", 4096, 577).image_token_count(1008, 336) == 577  # pad: one crop
