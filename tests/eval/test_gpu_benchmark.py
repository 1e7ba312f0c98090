"""`python -m llava.eval.gpu_benchmark` / `scripts/bench_gpu.sh`: the no-CUDA message, and every
measurement piece on CPU at the tiny preset (rows, reductions, JSON and Markdown, skipped backends,
the shallower training without checkpointing); the tiny end-to-end training throughput. No timing
is asserted. The CUDA run of the same pieces skips without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava.errors import UsageError, run_main
from llava.eval.gpu_benchmark import (
    Settings,
    backend_unavailable,
    main,
    ran_out_of_memory,
    run,
    scaled_start_layers,
)
from llava.eval.gpu_report import (
    JSON_NAME,
    MARKDOWN_NAME,
    format_markdown,
    skipped_phases_note,
    summarize,
    write_outputs,
)
from llava.eval.gpu_steps import OUT_OF_MEMORY, Repeats, is_out_of_memory
from llava.eval.train_throughput import tiny_training_throughput

TINY_CROP_ROWS = 37  # the tiny CLIP's 6 x 6 patches per crop, plus the crop's image-newline row

REPO = Path(__file__).resolve().parents[2]
no_cuda_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
TINY = {"preset": "tiny", "start_layers": (1, 2), "device": "cpu", "dtype": torch.float32, "text_tokens": 10,
        "crops": 2, "repeats": Repeats.quick(), "tiny_training_steps": None}
PHASES = ("prefill", "decode", "train_checkpointed", "train_no_checkpointing")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@no_cuda_only
def test_without_cuda_the_module_says_so_in_one_line(capsys):
    assert run_main(main, ["--no-tiny-training"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the GPU benchmark needs a CUDA GPU"), err


@no_cuda_only
def test_without_cuda_the_script_says_so_in_one_line():
    result = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0], result.stderr


@pytest.fixture(scope="module")
def shallow_result():
    """sdpa with the training step without checkpointing at 2 of 4 layers; flash-attention skipped."""
    return run(Settings(**TINY, backends=("sdpa", "flash_attention_2"), no_checkpointing_layers=2))


def _measured(result: dict) -> list[dict]:
    return [row for row in result["rows"] if row["status"] == "measured"]


def test_rows_carry_flops_times_and_reductions(shallow_result):
    rows = _measured(shallow_result)
    assert [(row["backend"], row["variant"], row["proxyv_start_layer"]) for row in rows] == \
        [("sdpa", "baseline", None), ("sdpa", "proxyv", 1), ("sdpa", "proxyv", 2)]
    for row in rows:
        for phase in PHASES:
            assert row[phase]["time_s"] > 0 and len(row[phase]["samples_s"]) == 1, (phase, row[phase])
            assert isinstance(row[f"{phase}_time_reduction"], float)
        assert row["total_flops"] > 0 and row["build_s"] > 0 and row["weights_mb"] > 0
    baseline, *proxyv = rows
    assert baseline["total_flops_reduction"] == 0 and baseline["prefill_time_reduction"] == 0
    assert all(row["total_flops_reduction"] > 0 for row in proxyv)
    assert proxyv[0]["total_flops_reduction"] > proxyv[1]["total_flops_reduction"]  # earlier start, more saved
    for row in proxyv:
        expected = 100 * (row["prefill_time_reduction"] - row["total_flops_reduction"])
        assert row["prefill_gap_points"] == pytest.approx(expected)
    assert [row["variant"] for row in shallow_result["flops"]] == ["baseline", "proxyv", "proxyv"]


def test_unavailable_backend_is_a_skipped_row_with_the_reason(shallow_result):
    (skipped,) = [row for row in shallow_result["rows"] if row["status"] != "measured"]
    assert skipped["backend"] == "flash_attention_2" and skipped["status"] == "skipped"
    assert skipped["reason"] == "flash-attention runs on CUDA only"
    assert "| flash_attention_2 | skipped: flash-attention runs on CUDA only |" in format_markdown(shallow_result)


def test_training_without_checkpointing_at_reduced_depth(shallow_result):
    rows = _measured(shallow_result)
    assert all(row["num_layers"] == 4 for row in rows)
    shallow = [row["train_no_checkpointing"] for row in rows]
    assert [(record["num_layers"], record["proxyv_start_layer"]) for record in shallow] == [(2, None), (2, 0), (2, 1)]
    markdown = format_markdown(shallow_result)
    assert "sdpa at 2 layers" in markdown and "| 2 (s = 0) |" in markdown


def test_json_and_markdown_outputs(shallow_result, tmp_path):
    json_path, markdown_path = write_outputs(shallow_result, str(tmp_path / "out"))
    assert Path(json_path).name == JSON_NAME and Path(markdown_path).name == MARKDOWN_NAME
    loaded = json.loads(Path(json_path).read_text())
    assert set(loaded) == {"setting", "flops", "rows", "summary", "mask_build", "tiny_training"}
    assert [row["backend"] for row in loaded["mask_build"]] == ["sdpa", "flex_attention"]
    setting = loaded["setting"]
    assert setting["sequence_length"] == 10 + 2 * TINY_CROP_ROWS and setting["dtype"] == "float32"
    assert setting["repeats"] == {"prefill": [0, 1], "decode": [0, 1], "train": [0, 1]}
    assert loaded["summary"]["fastest_backend"] == "sdpa"
    lines = Path(markdown_path).read_text().splitlines()
    table = [line for line in lines if line.startswith("| sdpa |")]
    header = next(line for line in lines if line.startswith("| backend |"))
    assert len(table) == 3 and all(line.count("|") == header.count("|") for line in table)
    assert "FLOPs red." in header and "red. - FLOPs red. (pts)" in header
    assert any(line.startswith("Fastest backend (baseline prefill): sdpa.") for line in lines)
    assert any(line.startswith("| flex block mask |") for line in lines)


def test_full_depth_training_without_checkpointing():
    result = run(Settings(**{**TINY, "start_layers": (2,)}, backends=("eager",)))
    baseline, proxyv = _measured(result)
    for row in (baseline, proxyv):
        assert "num_layers" not in row["train_no_checkpointing"] and row["train_no_checkpointing"]["time_s"] > 0
    assert "shallower model" not in format_markdown(result)


def test_out_of_memory_decides_the_shallow_fallback():
    assert ran_out_of_memory({"skipped": OUT_OF_MEMORY}) and not ran_out_of_memory({"time_s": 1.0})
    assert not ran_out_of_memory(None)
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert scaled_start_layers([12, 16], 32, 8) == [3, 4]
    assert scaled_start_layers([1, 2], 4, 2) == [0, 1]


def test_backend_checks():
    assert backend_unavailable("sdpa", "cpu") is None
    assert backend_unavailable("flash_attention_2", "cpu") == "flash-attention runs on CUDA only"
    with pytest.raises(UsageError, match="Unknown attention backend 'xformers'"):
        backend_unavailable("xformers", "cpu")


def test_summary_checks_the_goal_on_the_fastest_backend():
    def row(backend, variant, prefill_s, gap):
        return {"backend": backend, "variant": variant, "status": "measured", "proxyv_start_layer": None,
                "prefill": {"time_s": prefill_s}, "total_flops_reduction": 0.4, "prefill_time_reduction": 0.4,
                "prefill_gap_points": gap}

    rows = [row("eager", "baseline", 2.0, 0.0), row("eager", "proxyv", 1.0, -5.0),
            row("sdpa", "baseline", 1.0, 0.0), row("sdpa", "proxyv", 0.6, -1.5)]
    summary = summarize(rows)
    assert summary["fastest_backend"] == "sdpa" and summary["goal"] is True
    rows[3]["prefill_gap_points"] = -2.5
    assert summarize(rows)["goal"] is False


def test_phase_that_cannot_run_says_why():
    row = {"backend": "flex_attention", "variant": "baseline", "status": "measured",
           "train_checkpointed": {"skipped": "no backward on CPU"}, "train_no_checkpointing": {"skipped": OUT_OF_MEMORY}}
    assert skipped_phases_note([row]) == "n/a: flex_attention: no backward on CPU."


@pytest.mark.slow
def test_tiny_training_throughput(tiny_assets):
    result = tiny_training_throughput("cpu", steps=(1, 2), batch=1, assets=tiny_assets)
    assert [(row["variant"], row["proxyv_start_layer"]) for row in result["rows"]] == [("baseline", None), ("proxyv", 2)]
    for row in result["rows"]:
        assert row["steps"] == [1, 2] and len(row["train_runtime_s"]) == 2
        assert row["trainer_samples_per_second"] > 0
    assert result["rows"][0]["speedup"] in (1.0, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_backend_on_cuda_at_the_tiny_preset():
    result = run(Settings(**{**TINY, "device": "cuda", "dtype": torch.bfloat16}))
    assert {row["backend"] for row in _measured(result)} >= {"eager", "sdpa", "flex_attention"}
    assert all(row["prefill"]["time_s"] > 0 for row in _measured(result))
