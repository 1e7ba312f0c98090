"""The benchmark's spread: min / max / every run of each timed phase, the paired range of each time
reduction under `--interleave`, and the table's `median (min-max)` cells (no timing is asserted)."""

import json

import pytest

from llava.eval.prefill_benchmark import (
    DEFAULT_REPEATS,
    TIME_KEYS,
    add_reductions,
    format_table,
    main,
    parse_args,
    spread_key,
)

REPEATS = 3


def run(tmp_path, *args) -> dict:
    path = tmp_path / "result.json"
    assert main(["--model", "tiny", "--variants", "proxyv", "--device", "cpu", "--proxyv-start-layers", "2",
                 "--crops", "2", "--text-tokens", "10", "--repeats", str(REPEATS), "--warmup", "0", *args,
                 "--json", str(path)]) == 0
    return json.loads(path.read_text())


@pytest.mark.parametrize("interleave", [False, True])
def test_every_timed_phase_has_its_range(tmp_path, capsys, interleave):
    result = run(tmp_path, *(["--interleave"] if interleave else []))
    baseline, proxyv = result["rows"]
    for row in (baseline, proxyv):
        for key in TIME_KEYS:
            samples = row[spread_key(key, "samples")]
            assert len(samples) == REPEATS
            assert row[spread_key(key, "min")] == min(samples) <= row[key] <= max(samples) == row[spread_key(key, "max")]
    for name in ("time_reduction", "train_time_reduction", "decode_time_reduction"):
        assert baseline[f"{name}_min"] is None and baseline[f"{name}_max"] is None  # the baseline is not paired
        if interleave:
            assert proxyv[f"{name}_min"] <= proxyv[f"{name}_max"]
        else:  # runs one after another are not paired by round
            assert proxyv[f"{name}_min"] is None and proxyv[f"{name}_max"] is None
    assert "min" in result["setting"]["timing"] and result["setting"]["repeats"] == REPEATS
    table = capsys.readouterr().out
    low, high = proxyv["prefill_time_min_s"], proxyv["prefill_time_max_s"]
    assert f"{proxyv['prefill_time_s']:.3f} ({low:.3f}-{high:.3f})" in table


def test_meta_rows_have_empty_ranges(tmp_path):
    path = tmp_path / "meta.json"
    assert main(["--model", "tiny", "--variants", "proxyv", "--proxyv-start-layers", "2", "--json", str(path)]) == 0
    for row in json.loads(path.read_text())["rows"]:
        assert all(row[spread_key(key, stat)] is None for key in TIME_KEYS for stat in ("min", "max", "samples"))
        assert row["time_reduction_min"] is None


def _timed_row(variant: str, prefill: list[float]) -> dict:
    row = {"model": "m", "variant": variant, "proxyv_start_layer": None, "llm_flops": 1e12, "vision_flops": 0,
           "projector_flops": 0, "lm_head_flops": 0, "total_flops": 1e12, "prefill_peak_memory_mb": 1.0,
           "train_step_time_s": None, "decode_step_time_s": None, "train_peak_memory_mb": None,
           "prefill_time_s": sorted(prefill)[len(prefill) // 2], "prefill_time_min_s": min(prefill),
           "prefill_time_max_s": max(prefill), "prefill_time_samples_s": prefill}
    return row


def test_paired_reductions_and_their_cells():
    rows = [_timed_row("baseline", [10.0, 12.0, 11.0]), _timed_row("proxyv", [7.0, 12.6, 8.8])]
    add_reductions(rows, paired=True)
    proxyv = rows[1]
    assert proxyv["time_reduction"] == pytest.approx(1 - 8.8 / 11.0)  # from the medians
    assert proxyv["time_reduction_min"] == pytest.approx(1 - 12.6 / 12.0)  # round 2: ProxyV slower
    assert proxyv["time_reduction_max"] == pytest.approx(1 - 7.0 / 10.0)
    table = format_table({"setting": {}, "rows": rows})
    assert "| 11.000 (10.000-12.000) | 0.0% |" in table  # the baseline: its range, no paired range
    assert "| 8.800 (7.000-12.600) | 20.0% (-5.0 to 30.0%) |" in table  # a negative end reads as "to"


def test_repeats_default_to_five():
    assert DEFAULT_REPEATS == 5 and parse_args([]).repeats == 5
