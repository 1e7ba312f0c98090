"""The analytic FLOPs of `llava.eval.flops` against torch's FlopCounterMode.

Two checks: the benchmark's meta count (`count_prefill_flops`) equals the analytic formulas,
exactly, for the baseline and ProxyV at several start layers, spatial and learned proxies, on the
tiny shapes, a mid-size config and Vicuna-7B; and the meta count equals the count of the model's
real forward on CPU (eager attention, whose matmuls the counter sees; on CPU the counter has no
formula for SDPA's fused kernel and would miss the attention).
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llava.eval.flops import (
    DecoderShape,
    SequenceShape,
    analytic_prefill_flops,
    baseline_layer_flops,
    llm_prefill_flops,
    proxyv_layer_breakdown,
)
from llava.eval.prefill_benchmark import (
    build_model,
    build_variants,
    count_prefill_flops,
    make_images,
    make_input_ids,
)
from llava.eval.presets import ModelSpec, preset_spec


def mid_size_spec() -> ModelSpec:
    """A 1024-wide GQA Llama (d_m = 256) with the real CLIP-L/336 tower."""
    values = {**preset_spec("vicuna-7b").llava_values, "hidden_size": 1024, "intermediate_size": 2816,
              "num_hidden_layers": 6, "num_attention_heads": 16, "num_key_value_heads": 4}
    return ModelSpec("mid-size", values)


def meta_count(variant, text_tokens: int, crops: int) -> dict:
    model = build_model(variant, "meta", torch.float32, "sdpa")
    input_ids = make_input_ids(variant.config.vocab_size, text_tokens)
    return count_prefill_flops(model, input_ids, make_images(variant.spec, crops, "meta", torch.float32))


@pytest.mark.parametrize("learn_proxy", [False, True])
@pytest.mark.parametrize(("spec_name", "start_layers", "text_tokens", "crops"), [
    ("tiny", [0, 1, 2, 3, 4], 50, 5),
    ("tiny", [1, 3], 7, 1),
    ("mid", [0, 3, 5], 50, 5),
    ("vicuna-7b", [16], 50, 5),
])
def test_meta_counter_equals_analytic(spec_name, start_layers, text_tokens, crops, learn_proxy):
    spec = mid_size_spec() if spec_name == "mid" else preset_spec(spec_name)
    for variant in build_variants(spec, start_layers, None, learn_proxy):
        counted = meta_count(variant, text_tokens, crops)
        analytic = analytic_prefill_flops(variant.config, text_tokens, crops)
        assert counted == analytic, (variant.name, variant.start_layer)


def real_forward_count(variant, text_tokens: int, crops: int) -> dict:
    """Counts of the model's own forward on CPU, LLM and CLIP with eager attention."""
    model = build_model(variant, "cpu", torch.float32, "eager")
    model.get_vision_tower().vision_tower.set_attn_implementation("eager")
    input_ids = make_input_ids(variant.config.vocab_size, text_tokens)
    images = make_images(variant.spec, crops, "cpu", torch.float32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, images=images, use_cache=True, logits_to_keep=1)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    counts = {
        "vision_flops": by_module[f"{root}.model.vision_tower"],
        "projector_flops": by_module[f"{root}.model.mm_projector"],
        "lm_head_flops": by_module[f"{root}.lm_head"],
    }
    # The tower and projector run from the outer forward, so `root.model` is the decoder alone.
    counts["llm_flops"] = by_module[f"{root}.model"]
    assert sum(counts.values()) == counter.get_total_flops()
    return counts


@pytest.mark.parametrize(("start_layers", "learn_proxy"), [([2], False), ([1], True)])
def test_meta_count_equals_real_forward(start_layers, learn_proxy):
    for variant in build_variants(preset_spec("tiny"), start_layers, None, learn_proxy):
        assert meta_count(variant, 10, 2) == real_forward_count(variant, 10, 2), (variant.name, variant.start_layer)


def test_analytic_proxyv_from_last_layer_is_baseline():
    shape = DecoderShape(4096, 11008, 32, 32, 32000)
    seq = SequenceShape(text=50, crops=5, tokens_per_crop=576, proxies_per_crop=36)
    assert llm_prefill_flops(shape, seq, 32, 32, 1024) == llm_prefill_flops(shape, seq, 32) == \
        32 * baseline_layer_flops(shape, 2935)


def test_proxyv_layer_parts_for_vicuna_7b():
    """Hand-written counts of DESIGN.md's shapes: T = 2935, light 55 + 180 proxies, keys 2935 + 180."""
    shape = DecoderShape(4096, 11008, 32, 32, 32000)
    seq = SequenceShape(text=50, crops=5, tokens_per_crop=576, proxies_per_crop=36)
    parts = proxyv_layer_breakdown(shape, seq, reduced_size=1024)
    assert parts["q_o_proj"] == 2 * 2 * 235 * 4096 * 4096
    assert parts["k_v_proj"] == 2 * 2 * 3115 * 4096 * 4096
    assert parts["attention"] == 4 * 32 * 235 * 3115 * 128
    assert parts["ffn"] == 3 * 2 * 235 * 4096 * 11008
    assert parts["vision_mlp"] == 2 * 2880 * (4096 * 1024 + 2048 * 1024 + 1024 * 4096)
    assert parts["context_proj"] == 2 * 180 * 4096 * 1024
    assert parts["guidance"] == 0



@pytest.mark.parametrize("spec_name", ["tiny", "vicuna-7b"])
def test_reduction_rows_counter_equals_analytic(spec_name):
    """VisionZip's LLM sees dominant + contextual tokens per crop: the baseline / non-spatial ProxyV
    formulas with that crop length. (Its tower also recomputes the CLS attention, which the
    analytic tower count leaves out, so only the later stages are compared.) PyramidDrop: ordinary
    layers over shrinking stages plus each drop's ranking."""
    spec = preset_spec(spec_name)
    for variant in build_variants(spec, [], None, False, ("visionzip", "visionzip+proxyv", "pyramiddrop")):
        if variant.name == "baseline":
            continue
        counted = meta_count(variant, 50, 5)
        analytic = analytic_prefill_flops(variant.config, 50, 5)
        for part in ("projector_flops", "llm_flops", "lm_head_flops"):
            assert counted[part] == analytic[part], (variant.name, part)
