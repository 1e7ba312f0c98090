"""`python -m llava.eval.layer_profile` on the tiny presets: every part runs, the replays reproduce the
real layers bit for bit, the parts add up to the layer's total, and bad options are one usage line
(no timing is asserted)."""

import json

import pytest

from llava.errors import run_main
from llava.eval.layer_profile import UNACCOUNTED, format_tables, main

TINY_CROP_ROWS = 37  # the tiny CLIP's 6 x 6 patches per crop, plus the crop's image-newline row

PROXYV_PARTS = ("gather_light + cat proxies", "input norm, natural (T)", "q_proj (Tl + P)",
                "k/v_proj (T + P, full tokens)", "RoPE (rotate)", "core attention (masked)", "o_proj",
                "FFN (Tl + P)", "gather_full", "scatter_light", "VisionMLP: guidance (context_proj + copy)",
                "VisionMLP: W1, SiLU, W2", "VisionMLP: residual + RMSNorm", "scatter_full")
BASELINE_PARTS = ("input norm (T)", "q_proj (T)", "k/v_proj (T)", "core attention (causal)", "o_proj", "FFN (T)")


def profile(tmp_path, *args) -> dict:
    path = tmp_path / "profile.json"
    assert main(["--model", "tiny", "--crops", "2", "--text-tokens", "10", "--repeats", "2", *args,
                 "--json", str(path)]) == 0
    return json.loads(path.read_text())


def check_layer(layer: dict, expected_parts: tuple[str, ...]) -> None:
    assert layer["replay_exact"] is True
    names = [row["part"] for row in layer["parts"]]
    assert set(expected_parts) <= set(names) and names[-1] == UNACCOUNTED
    total = layer["total"]
    assert total["min_ms"] <= total["median_ms"] <= total["max_ms"]
    assert sum(row["median_ms"] for row in layer["parts"]) == pytest.approx(total["median_ms"])
    assert sum(row["share"] for row in layer["parts"]) == pytest.approx(1.0)
    assert sum(row["median_ms"] for row in layer["groups"]) == pytest.approx(total["median_ms"])
    for row in layer["parts"][:-1] + layer["per_forward"]:
        assert 0 <= row["min_ms"] <= row["median_ms"] <= row["max_ms"], row


@pytest.mark.parametrize("extra", [[], ["--learn-proxy", "--proxyv-start-layers", "1"]], ids=["spatial", "learned"])
def test_both_layers_profile_part_by_part(tmp_path, capsys, extra):
    result = profile(tmp_path, *extra)
    proxyv, baseline = result["layers"]["proxyv"], result["layers"]["baseline"]
    check_layer(proxyv, PROXYV_PARTS)
    check_layer(baseline, BASELINE_PARTS)
    assert [row["part"] for row in proxyv["per_forward"]][0].startswith("plan: indices + mask")
    assert {row["part"] for row in baseline["per_forward"]} == {"causal mask", "RoPE cos/sin"}
    assert result["setting"]["sequence_length"] == 10 + 2 * TINY_CROP_ROWS and result["setting"]["repeats"] == 2
    out = capsys.readouterr().out
    assert out.count("| part | group | ms median (min-max) | share of layer |") == 2 and "replay exact" in out
    assert "| scatter_full | gather/scatter |" in out
    dense, block = result["mask_build"]
    assert (dense["backend"], block["backend"]) == ("sdpa", "flex_attention")
    proxies = 2 * 9  # 2 crops of the tiny CLIP's 6 x 6 tokens, 3 x 3 proxies each
    queries, keys = 10 + 2 + proxies, 10 + 2 * TINY_CROP_ROWS + proxies  # text + newlines + proxies; sequence + proxies
    assert dense["mask_mb"] == queries * keys * 4 / 2**20  # one float32 [1, 1, Q, K] mask
    assert 0 < block["mask_mb"] < dense["mask_mb"] and block["min_ms"] <= block["median_ms"] <= block["max_ms"]
    assert "| flex block mask |" in out


@pytest.mark.parametrize("family", ["tiny-qwen3", "tiny-phi3"])
def test_other_families_replay_exactly(tmp_path, family):
    result = profile(tmp_path, "--model", family, "--repeats", "1")
    assert all(layer["replay_exact"] for layer in result["layers"].values())


def test_a_differing_replay_is_flagged_in_the_table():
    row = {"part": "o_proj", "group": "attention: o_proj", "median_ms": 2.0, "min_ms": 1.5, "max_ms": 3.0,
           "share": 0.5}
    layer = {"total": {"median_ms": 4.0, "min_ms": 3.0, "max_ms": 5.0}, "replay_exact": False, "parts": [row],
             "groups": [{"group": "attention: o_proj", "median_ms": 2.0, "share": 0.5}], "per_forward": []}
    table = format_tables({"setting": {"start_layer": 1}, "layers": {"proxyv": layer}})
    assert "REPLAY DIFFERS" in table and "| o_proj | attention: o_proj | 2.00 (1.50-3.00) | 50.0% |" in table


@pytest.mark.parametrize(("argv", "culprit"), [
    (["--repeats", "0"], "--repeats and --warmup must be >= 1"),
    (["--warmup", "0"], "--repeats and --warmup must be >= 1"),
    (["--crops", "0"], "--crops must be >= 1"),
    (["--layers", "2", "--proxyv-start-layers", "2"], "--proxyv-start-layers must be one layer in [0, 1]"),
    (["--layers", "0"], "--layers must be in [1, "),
    (["--attn-implementation", "flash_attention_2"], "needs --device cuda"),
    (["--attn-implementation", "flex_attention"], "timed on CUDA"),
    (["--json", "no/such/folder/out.json"], "not a file in an existing folder"),
    (["--model", "no-such-model"], "neither a preset"),
], ids=["repeats", "warmup", "crops", "start-layer", "layers", "flash-on-cpu", "flex-on-cpu", "json-folder", "unknown-model"])
def test_bad_options_are_one_usage_line(argv, culprit, capsys):
    assert run_main(main, ["--model", "tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and culprit in err and "Traceback" not in err, err
