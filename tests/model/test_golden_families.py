"""Golden outputs of the authors' ProxyV for the Qwen2 (`llava_qwen`) and Phi-3 (`llava_phi`) backbones.

`tests/data/golden_families/` holds tiny checkpoints in the authors' release format and the loss /
logits their own implementation (penghao-wu/ProxyV 42d6d97, transformers 4.41.2, fp32, eager)
produced for them, under their ("release") newline positions and under the natural scheme; its
README says how. The checkpoints' `mm_vision_tower` is the placeholder `CLIP_DIR`: the tiny CLIP
folder of the shared Llama golden (`../shared/golden/proxyv_release/clip`) takes its place, so
these tests skip when that folder is absent.

Each checkpoint loads through our builder, must become a ProxyV model of its family with every
tensor of the file as a parameter (and no other), and must reproduce the authors' numbers to 1e-4
with real 576-token AnyRes crops from `process_images` (3, 4 and 5 crops).

What the numbers pin down beyond the Llama golden: Qwen2's q/k/v biases and rope theta 1e6 /
rms eps 1e-6 (also the VisionMLP's norm); Phi-3's fused `qkv_proj` / `gate_up_proj` with grouped
KV heads; Phi-3's `sliding_window` (511, far below every sequence) is NOT applied in prefill by
the authors' code; their Phi-3 guided update always uses the spatial splat, even with
`learn_proxy` (case `phi3_learned_s2`); and a few vision rows' logits, which only the last
ProxyV layer's guided update reaches.
"""

import json
from pathlib import Path

import pytest
import torch

from tests.golden_helpers import (
    assert_all_weights_from_file,
    case_id,
    case_inputs,
    copy_golden_checkpoints,
    golden_loader,
)
from tests.paths import GOLDEN

FAMILIES = Path(__file__).resolve().parents[1] / "data" / "golden_families"
CLIP = GOLDEN / "clip"
CASES = json.loads((FAMILIES / "cases.json").read_text())["cases"]
CHECKPOINTS = sorted({case["checkpoint"] for case in CASES})
ATOL = 1e-4
CROP = 576

pytestmark = pytest.mark.skipif(not CLIP.is_dir(), reason="the shared golden tiny CLIP folder is not present")

def file_config(name):
    return json.loads((FAMILIES / name / "config.json").read_text())


@pytest.fixture(scope="module")
def golden_dirs(tmp_path_factory):
    """The checkpoints copied to tmp with `CLIP_DIR` pointing at the shared tiny CLIP folder."""
    return copy_golden_checkpoints(CHECKPOINTS, FAMILIES, CLIP, tmp_path_factory.mktemp("golden_families"))


@pytest.fixture(scope="module")
def loaded(golden_dirs):
    """`loaded(name, impl)` -> (model, processor), each loaded once per module through our builder."""
    load = golden_loader(golden_dirs)
    yield load
    load.cache_clear()


def run(model, processor, case):
    with torch.no_grad():
        out = model(**case_inputs(case, processor, model.config, FAMILIES))
    assert out.logits.shape == (1, case["seq_len"], file_config(case["checkpoint"])["vocab_size"])
    return out


def test_golden_data_is_consistent():
    """The data itself: 3, 4 and 5 crops per checkpoint, Phi-3 windows below every sequence length."""
    assert CHECKPOINTS == ["phi3_learned_s2", "phi3_spatial_s1", "qwen2_learned_s2", "qwen2_spatial_s1"]
    for name in CHECKPOINTS:
        assert sorted(c["num_crops"] for c in CASES if c["checkpoint"] == name) == [3, 4, 5]
    for case in CASES:
        config = file_config(case["checkpoint"])
        assert config["model_type"] == ("llava_qwen" if case["checkpoint"].startswith("qwen2") else "llava_phi")
        assert config["proxyv"] is True and "image_newline_positions" not in config
        assert case["seq_len"] == len(case["input_ids"]) - 1 + case["num_crops"] * (CROP + 1)
        if config["model_type"] == "llava_phi":
            assert config["sliding_window"] < case["seq_len"] - CROP


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_golden_families_load_as_proxyv(name, impl, loaded, golden_dirs):
    model, processor = loaded(name, impl)
    config = file_config(name)
    family = "Qwen" if config["model_type"] == "llava_qwen" else "Phi"
    class_name = type(model).__name__
    assert "ProxyV" in class_name and family in class_name, class_name
    assert processor is not None
    assert model.config.image_newline_positions == "release"  # authors' config: `proxyv`, no scheme key
    assert model.config._attn_implementation == impl
    assert model.config.proxyv_start_layer == config["proxyv_start_layer"]
    assert bool(model.config.learn_proxy) is config["learn_proxy"]
    assert model.config.num_hidden_layers == config["num_hidden_layers"]
    assert_all_weights_from_file(model, golden_dirs[name])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_families_release_outputs(case, impl, loaded):
    model, processor = loaded(case["checkpoint"], impl)
    assert model.config.image_newline_positions == "release"
    out = run(model, processor, case)
    torch.testing.assert_close(out.loss, torch.tensor(case["loss"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[0, -1], torch.tensor(case["last_logits"]), atol=ATOL, rtol=0)
    rows = out.logits[0, case["text_rows_natural_index"]]
    torch.testing.assert_close(rows, torch.tensor(case["text_logits_natural"]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_families_vision_rows(case, loaded):
    """Logits of a few full vision tokens: only the last ProxyV layer's guided update reaches them."""
    model, processor = loaded(case["checkpoint"], "eager")
    out = run(model, processor, case)
    rows = out.logits[0, case["vision_rows_natural_index"]]
    torch.testing.assert_close(rows, torch.tensor(case["vision_logits_natural"]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_families_natural_scheme_outputs(case, loaded):
    model, processor = loaded(case["checkpoint"], "eager")
    model.config.image_newline_positions = "natural"
    try:
        out = run(model, processor, case)
    finally:
        model.config.image_newline_positions = "release"
    expected = case["natural_scheme"]
    torch.testing.assert_close(out.loss, torch.tensor(expected["loss"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[0, -1], torch.tensor(expected["last_logits"]), atol=ATOL, rtol=0)
