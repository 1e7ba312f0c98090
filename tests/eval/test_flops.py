"""The analytic FLOPs of `llava.eval.flops` against torch's FlopCounterMode, for every decoder family.

Three checks: the benchmark's meta count (`count_prefill_flops`) equals the analytic formulas,
exactly, for the baseline, ProxyV (spatial and learned proxies) and every other benchmark row, on
a tiny model of every family (`tiny_llm_config(tokenizer, family)`, plus Qwen3 with a head_dim that
is not hidden / heads), a mid-size config, and every real preset (decoder only at s = 12, 16, 20 and
the paper setting; all stages for the baseline); the meta count equals the count of the model's
real forward on CPU (eager attention, whose matmuls the counter sees; on CPU the counter has no
formula for SDPA's fused kernel and would miss the attention); and hand-written per-layer counts
(Phi-3's fused q/k/v, Qwen3's explicit head_dim).
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llava.eval.flops import (
    DecoderShape,
    SequenceShape,
    analytic_prefill_flops,
    baseline_layer_flops,
    decoder_shape,
    llm_prefill_flops,
    proxyv_layer_breakdown,
    pyramid_drop_llm_flops,
)
from llava.eval.prefill_benchmark import (
    VARIANT_FAMILIES,
    _count,
    _decoder,
    build_model,
    build_variants,
    count_prefill_flops,
    cpu_layout,
    make_images,
    make_input_ids,
    paper_start_layers,
)
from llava.eval.presets import NOT_CONFIG_KEYS, ModelSpec, preset_spec
from llava.model import FAMILIES
from llava.tiny.models import tiny_llm_config
from tests.model_fixtures import tiny_wordlevel_tokenizer

TINY_LLM_KEYS = set(tiny_llm_config(tiny_wordlevel_tokenizer()).to_dict())


def tiny_family_spec(family: str, **overrides) -> ModelSpec:
    """The package's tiny decoder of `family` (`tiny_llm_config`) with the tiny CLIP tower."""
    llm = tiny_llm_config(tiny_wordlevel_tokenizer(), family, **overrides).to_dict()
    tower = {k: v for k, v in preset_spec("tiny").llava_values.items() if k not in TINY_LLM_KEYS}
    values = {k: v for k, v in llm.items() if k not in NOT_CONFIG_KEYS}
    return ModelSpec(f"tiny-{family}", {**values, **tower}, preset_spec("tiny").proxyv_options, family=family)


TINY_FAMILIES = [*((family, {}) for family in FAMILIES), ("qwen3", {"head_dim": 32})]  # 4 heads x 32 != 64


def mid_size_spec() -> ModelSpec:
    """A 1024-wide GQA Llama (d_m = 256) with the real CLIP-L/336 tower."""
    values = {**preset_spec("vicuna-7b").llava_values, "hidden_size": 1024, "intermediate_size": 2816,
              "num_hidden_layers": 6, "num_attention_heads": 16, "num_key_value_heads": 4}
    return ModelSpec("mid-size", values)


def meta_count(variant, text_tokens: int, crops: int) -> dict:
    model = build_model(variant, "meta", torch.float32, "sdpa")
    input_ids = make_input_ids(variant.config.vocab_size, text_tokens)
    return count_prefill_flops(model, input_ids, make_images(variant.spec, crops, "meta", torch.float32))


@pytest.mark.parametrize(("spec_name", "start_layers", "text_tokens", "crops", "learn_proxy"), [
    ("tiny", [0, 1, 2, 3, 4], 50, 5, False),
    ("tiny", [0, 3], 50, 5, True),
    ("tiny", [1, 3], 7, 1, False),
    ("tiny", [1, 3], 7, 1, True),
    ("mid", [0, 3, 5], 50, 5, False),
    ("mid", [3], 50, 5, True),
    ("vicuna-7b", [16], 50, 5, True),
])
def test_meta_counter_equals_analytic(spec_name, start_layers, text_tokens, crops, learn_proxy):
    spec = mid_size_spec() if spec_name == "mid" else preset_spec(spec_name)
    for variant in build_variants(spec, start_layers, None, learn_proxy):
        counted = meta_count(variant, text_tokens, crops)
        analytic = analytic_prefill_flops(variant.config, text_tokens, crops)
        assert counted == analytic, (variant.name, variant.start_layer)


def assert_rows_agree(variant, text_tokens: int, crops: int) -> None:
    """Every stage agrees; VisionZip's tower also recomputes the CLS attention of the selected layer,
    which the analytic tower count leaves out, so for it only the later stages are compared."""
    counted = meta_count(variant, text_tokens, crops)
    analytic = analytic_prefill_flops(variant.config, text_tokens, crops)
    if getattr(variant.config, "vision_token_reduction", None) == "visionzip":
        counted, analytic = ({k: v for k, v in flops.items() if k != "vision_flops"} for flops in (counted, analytic))
    assert counted == analytic, (variant.spec.name, variant.name, variant.start_layer)


@pytest.mark.parametrize(("family", "overrides"), TINY_FAMILIES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}{w}" for k, w in v.items()) or "default")
def test_every_family_and_row_counter_equals_analytic(family, overrides):
    """Tiny model of each family: baseline, spatial ProxyV from 0 and 2, learned ProxyV from 1 (its
    guided update by the learned assignment, and by the spatial copy of the authors' Phi-3 release),
    and the VisionZip, PyramidDrop, VisionZip+ProxyV and study-variant rows, all stages."""
    spec = tiny_family_spec(family, **overrides)
    variants = build_variants(spec, [0, 2], None, False, tuple(VARIANT_FAMILIES))
    variants += build_variants(spec, [1], None, True)[1:]
    copy_back = dataclasses.replace(spec, proxyv_options={**spec.proxyv_options, "learned_proxy_guidance": "spatial"})
    variants += build_variants(copy_back, [1], None, True)[1:]
    assert variants[-1].config.learned_proxy_guidance == "spatial"
    assert {type(v.config).model_type for v in variants} == \
        {FAMILIES[family].family.baseline_model_type, FAMILIES[family].family.proxyv_model_type}
    for variant in variants:
        assert_rows_agree(variant, 50, 5)


def decoder_count(variant, text_tokens: int = 50, crops: int = 5) -> int:
    """The benchmark's meta count of the decoder layers alone (the `llm_flops` stage)."""
    model = build_model(variant, "meta", torch.float32, "sdpa")
    input_ids = make_input_ids(variant.config.vocab_size, text_tokens)
    layout = cpu_layout(model.config, input_ids, crops, variant.spec.tokens_per_crop)
    hidden = torch.empty(1, layout.token_kind.shape[1], model.config.hidden_size, device="meta")
    return _count(_decoder, model, hidden, layout)[1]


# One real backbone per distinct shape rule (MHA, grouped KV, biases, fused projections); every family,
# Qwen3's head_dim and InternLM2's converted layout are covered on tiny shapes above, and the same
# formulas at the other presets' sizes add only run time.
REAL_PRESETS = ("vicuna-7b", "llama3-8b", "qwen2-7b", "phi3-mini")


@pytest.mark.parametrize("name", REAL_PRESETS)
def test_real_presets_counter_equals_analytic(name):
    """Real backbones on meta: the decoder at s = 12, 16, 20 and the paper setting; every stage of
    the baseline (the tower, projector and head are the same for every variant of a preset)."""
    spec = preset_spec(name)
    start_layers = sorted({12, 16, 20, *paper_start_layers(spec.num_layers)})
    baseline, *proxyv = build_variants(spec, start_layers)
    assert [v.start_layer for v in proxyv] == start_layers
    assert meta_count(baseline, 50, 5) == analytic_prefill_flops(baseline.config, 50, 5)
    for variant in proxyv:
        assert decoder_count(variant) == analytic_prefill_flops(variant.config, 50, 5)["llm_flops"], variant.start_layer


def test_reduction_rows_of_phi3_mini_counter_equals_analytic():
    """The VisionZip, PyramidDrop, VisionZip+ProxyV and study-variant rows of a real backbone, the one
    whose fused projection runs on both streams of the study layers and in PyramidDrop's ranking
    (every family's rows on tiny shapes: above; every preset's: docs/efficiency.md's run)."""
    families = tuple(name for name in VARIANT_FAMILIES if name != "proxyv")
    for variant in build_variants(preset_spec("phi3-mini"), [], None, False, families)[1:]:
        assert_rows_agree(variant, 50, 5)


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


@pytest.mark.parametrize(("family", "overrides", "start_layers", "learn_proxy"), [
    ("llama", {}, [2], False), ("llama", {}, [1], True), ("phi3", {}, [2], False), ("qwen3", {"head_dim": 32}, [1], True),
])
def test_meta_count_equals_real_forward(family, overrides, start_layers, learn_proxy):
    spec = tiny_family_spec(family, **overrides)
    for variant in build_variants(spec, start_layers, None, learn_proxy):
        assert meta_count(variant, 10, 2) == real_forward_count(variant, 10, 2), (variant.name, variant.start_layer)


def test_analytic_proxyv_from_last_layer_is_baseline():
    shape = DecoderShape(4096, 11008, 32, 32, 32000)
    seq = SequenceShape(text=50, crops=5, tokens_per_crop=576, proxies_per_crop=36)
    assert llm_prefill_flops(shape, seq, 32, 32, 1024) == llm_prefill_flops(shape, seq, 32) == \
        32 * baseline_layer_flops(shape, 2935)


def test_proxyv_layer_parts_for_vicuna_7b():
    """Hand-written counts of the paper's prefill shapes (docs/design.md §4.1): T = 2935, light 55 + 180 proxies, keys 2935 + 180."""
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


def test_phi3_fused_qkv_costs_what_separate_projections_cost():
    """Phi-3-mini (d = 3072, 32 heads, 32 kv heads): its fused qkv_proj is sliced per stream (the q
    rows for the 235 queries, the k/v rows for the 3115 keys), so a ProxyV layer and a baseline
    layer cost what they cost with separate q/k/v; the meta counter checks the model really does so."""
    fused = preset_spec("phi3-mini")
    config = FAMILIES["phi3"].proxyv_config(**fused.llava_values, proxyv_start_layer=16)
    shape = decoder_shape(config)
    assert (shape.head_dim, shape.q_size, shape.kv_size) == (96, 3072, 3072)
    seq = SequenceShape(text=50, crops=5, tokens_per_crop=576, proxies_per_crop=36)
    parts = proxyv_layer_breakdown(shape, seq, reduced_size=768)
    assert parts["q_o_proj"] == 2 * 2 * 235 * 3072 * 3072
    assert parts["k_v_proj"] == 2 * 2 * 3115 * 3072 * 3072


def test_explicit_head_dim_sizes_q_k_v_o_and_attention():
    """Qwen3-0.6B's shape (d = 1024, 16 heads of 128, 8 kv heads): q is 1024 -> 2048, o 2048 -> 1024."""
    shape = DecoderShape(1024, 3072, 16, 8, 151936, head_dim=128)
    assert (shape.q_size, shape.kv_size) == (2048, 1024)
    tokens = 100
    expected = (2 * tokens * 1024 * (2048 + 2 * 1024) + 2 * tokens * 2048 * 1024 + 4 * 16 * tokens * tokens * 128
                + 6 * tokens * 1024 * 3072)
    assert baseline_layer_flops(shape, tokens) == expected


def test_pyramid_drop_ranking_projects_keys_only():
    """Each drop ranks with the next layer's query of one token and the keys (no values) of every token."""
    shape = DecoderShape(64, 128, 4, 2)
    seq = SequenceShape(text=50, crops=5, tokens_per_crop=576)
    no_drop = pyramid_drop_llm_flops(shape, seq, 4, [], 0.5)
    one_drop = pyramid_drop_llm_flops(shape, seq, 4, [2], 0.5)
    ranking = 2 * 64 * 64 + 2 * 2935 * 64 * 32 + 2 * 4 * 16 * 2935  # q 64 -> 64, k 64 -> 2 kv heads x 16
    assert one_drop == 2 * baseline_layer_flops(shape, 2935) + ranking + 2 * baseline_layer_flops(shape, 2935 - 1440)
    assert no_drop == 4 * baseline_layer_flops(shape, 2935)
