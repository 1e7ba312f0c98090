"""A real training run on data mixed with the broken corpus: each bad record is skipped with one
warning naming it, the skips are summarised at the end, too many of them stop the run, and a
NaN/inf loss stops it naming the step and the batch's record ids."""

import json
import re
import subprocess
import sys

from transformers import AutoTokenizer

from llava.train.check_data import TokenBudget, check_data
from tests.broken_corpus import write_broken_corpus
from tests.train.test_two_stage import TRAIN, _run, _stage1


def _mixed_data(tiny_assets, tmp_path):
    """20 good captions + the broken corpus, its image paths made absolute (the image folder is the tiny one)."""
    corpus = write_broken_corpus(tmp_path / "broken")
    broken = json.loads(corpus.json_path.read_text())
    for record in broken:
        if isinstance(record, dict) and "image" in record:
            paths = record["image"] if isinstance(record["image"], list) else [record["image"]]
            record["image"] = [str(corpus.images / path) for path in paths]
            if len(record["image"]) == 1:
                record["image"] = record["image"][0]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(json.loads(tiny_assets.captions.read_text())[:20] + broken))
    return str(path), str(corpus.jsonl_path)


def test_bad_records_are_skipped_and_summarised_then_too_many_stop_the_run(tiny_assets, tmp_path):
    mixed, jsonl = _mixed_data(tiny_assets, tmp_path)
    data = f"{mixed},{jsonl}"
    steps = ["--max_steps", "3", "--per_device_train_batch_size", "8", "--model_max_length", "4096"]
    log = _run(_stage1(tiny_assets, tmp_path / "ok", *steps, "--data_path", data, "--max_bad_sample_fraction", "1"))
    warned = re.findall(r"Skipping record (\S+) \((\w+)\)", log)
    assert warned and len({name for name, _ in warned}) == len(warned)  # one warning per record
    # The same verdicts as the pre-flight with the run's tokenizer and template (under 'plain' the
    # text-only records fail tokenization too).
    budget = TokenBudget(AutoTokenizer.from_pretrained(tiny_assets.llm), "plain", 4096, 100)
    verdicts = check_data(data, None, budget)
    kinds = {name.replace(mixed, ""): kind for kind, names in verdicts.problems.items() for name in names}
    assert {"bomb", "one_pixel", "missing_file", "ok_text"} <= set(kinds)
    assert all(kinds[name] == kind for name, kind in warned), warned
    summary = re.search(r"Data summary: Skipped (\d+) unusable records", log)
    assert summary and 0 < int(summary.group(1)) <= verdicts.bad, log[-2000:]
    assert "Skipping " in log and "line 2: invalid JSON" in log  # the JSONL syntax error, at load time

    # With the default limit (0.01): the JSONL syntax error alone stops it at load time; without
    # the JSONL file, the first skipped record of the epoch does, during training.
    stopped = subprocess.run(
        [sys.executable, TRAIN, *_stage1(tiny_assets, tmp_path / "stopped", *steps, "--data_path", data)],
        capture_output=True, text=True, timeout=600,
    )
    assert stopped.returncode != 0
    assert "1 of 47 data lines are not valid JSON, more than --max_bad_sample_fraction 0.01" in stopped.stderr
    stopped = subprocess.run(
        [sys.executable, TRAIN, *_stage1(tiny_assets, tmp_path / "stopped", *steps, "--data_path", mixed)],
        capture_output=True, text=True, timeout=600,
    )
    assert stopped.returncode != 0
    assert re.search(r"records were skipped as unusable in epoch 0, more than --max_bad_sample_fraction 0.01",
                     stopped.stderr), stopped.stderr[-3000:]


def test_non_finite_loss_stops_the_run_naming_step_and_records(tiny_assets, tmp_path):
    args = _stage1(tiny_assets, tmp_path / "nan", "--max_steps", "4", "--learning_rate", "1e30")
    result = subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    match = re.search(r"training stopped: the loss is (nan|inf|-inf) \(NaN/inf on 1 process\(es\)\) at step (\d+); this process's batch "
                      r"holds records \[([^\]]+)\]", result.stderr)
    assert match, result.stderr[-3000:]
    assert int(match.group(2)) >= 2 and len(match.group(3).split(",")) == 4
