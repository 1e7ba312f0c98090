"""The prefill benchmark's VisionZip, PyramidDrop and VisionZip+ProxyV rows (tiny presets, FLOPs on meta;
timed on CPU for the Llama family and for Phi-3, whose fused projection differs most)."""

import json

import pytest

from llava.eval.prefill_benchmark import VISIONZIP_PAPER, build_variants, main
from llava.eval.presets import load_model_spec

FAMILIES = ("visionzip", "pyramiddrop", "visionzip+proxyv")


@pytest.mark.parametrize("model", ["tiny", "tiny-phi3"])
def test_rows_appear_and_reduce_flops(tmp_path, model):
    path = tmp_path / "result.json"
    assert main(["--model", model, "--proxyv-start-layers", "2", "--variants", ",".join(FAMILIES), "--json", str(path)]) == 0
    rows = {row["variant"]: row for row in json.loads(path.read_text())["rows"]}
    assert set(rows) == {"baseline", *FAMILIES}
    baseline = rows["baseline"]["llm_flops"]
    for name in FAMILIES:
        assert 0 < rows[name]["llm_flops"] < baseline, name
        assert rows[name]["llm_flops_analytic"] == rows[name]["llm_flops"], name  # llava.eval.flops agrees
    # Non-spatial ProxyV on the reduced tokens saves more than VisionZip alone.
    assert rows["visionzip+proxyv"]["llm_flops"] < rows["visionzip"]["llm_flops"]


def test_paper_settings_scale_with_the_preset():
    spec = load_model_spec("vicuna-7b")
    variants = {v.name: v for v in build_variants(spec, [16], families=FAMILIES)}
    zip_config = variants["visionzip"].config
    assert (zip_config.visionzip_dominant, zip_config.visionzip_contextual) == VISIONZIP_PAPER[:2]
    assert variants["pyramiddrop"].config.pyramid_drop_layers == [12, 20, 26]
    assert variants["visionzip+proxyv"].config.learn_proxy and variants["visionzip+proxyv"].start_layer == 16
    cut = {v.name: v for v in build_variants(spec, [8], layers=16, families=("pyramiddrop",))}
    assert cut["pyramiddrop"].config.pyramid_drop_layers == [6, 10, 13]


@pytest.mark.parametrize("model", ["tiny", "tiny-phi3"])
def test_cpu_run_times_prefill_train_and_decode(tmp_path, model):
    """The timed phases run for every reduction row: prefill, a training step, and a decoding step
    over the staged PyramidDrop cache (cropped back after each step)."""
    path = tmp_path / "result.json"
    assert main(["--model", model, "--proxyv-start-layers", "2", "--variants", ",".join(FAMILIES), "--device", "cpu",
                 "--repeats", "2", "--warmup", "0", "--crops", "2", "--json", str(path)]) == 0
    for row in json.loads(path.read_text())["rows"]:
        assert row["prefill_time_s"] > 0 and row["train_step_time_s"] > 0 and row["decode_step_time_s"] > 0, row
