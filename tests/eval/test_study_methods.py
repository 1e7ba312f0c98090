"""`llava.eval.study_methods`: the study's methods, their configs and their prefill FLOPs."""

import pytest
from transformers import AutoConfig

from llava.eval.flops import analytic_prefill_flops
from llava.eval.prefill_benchmark import pyramid_drop_layers
from llava.eval.study_methods import Method, method_config, method_prefill_flops, study_methods
from llava.model.proxyv.study import start_layer_for_mask_ratio


def test_methods_of_a_four_layer_decoder_with_36_tokens_per_crop():
    methods = {method.name: method for method in study_methods(4, 36, mask_fractions=(0.5, 1.0))}
    assert list(methods) == ["baseline", "proxyv", "visionzip 24/36", "visionzip 12/36", "pyramiddrop 2,3",
                             "mask q=0.5", "mask q=1"]
    assert methods["visionzip 24/36"].overrides == {"vision_token_reduction": "visionzip", "visionzip_dominant": 22,
                                                    "visionzip_contextual": 2}
    assert methods["pyramiddrop 2,3"].overrides == {"pyramid_drop_layers": [2, 3], "pyramid_drop_ratio": 0.5}
    assert methods["proxyv"].checkpoint == "proxyv" and methods["mask q=1"].checkpoint == "baseline"
    assert methods["baseline"].masked_fraction == 0.0 and methods["mask q=0.5"].masked_fraction == 0.5
    assert methods["proxyv"].masked_fraction is None


def test_a_one_layer_decoder_has_no_pyramid_drop_and_bad_fractions_are_refused():
    assert not any(method.kind == "pyramiddrop" for method in study_methods(1, 36))
    assert pyramid_drop_layers(2) == [1] and pyramid_drop_layers(32) == [12, 20, 26]
    with pytest.raises(ValueError, match="at least 2 layers"):
        pyramid_drop_layers(1)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        study_methods(4, 36, mask_fractions=(0.0,))


@pytest.fixture(scope="module")
def configs(tiny_assets):
    return AutoConfig.from_pretrained(tiny_assets.llava), AutoConfig.from_pretrained(tiny_assets.llava_proxyv)


def test_method_configs_change_only_what_the_method_sets(configs):
    baseline, _ = configs
    methods = {method.kind: method for method in study_methods(baseline.num_hidden_layers, 36, (0.5,))}
    assert method_config(baseline, methods["baseline"]) is baseline
    zipped = method_config(baseline, methods["visionzip"])
    assert type(zipped) is type(baseline) and zipped.vision_token_reduction == "visionzip"
    assert zipped.hidden_size == baseline.hidden_size and zipped.mm_vision_tower == baseline.mm_vision_tower
    masked = method_config(baseline, methods["mask"])
    assert masked.proxyv_variant == "mask_vision_attention"
    assert masked.proxyv_start_layer == start_layer_for_mask_ratio(0.5, baseline.num_hidden_layers)
    assert masked.num_hidden_layers == baseline.num_hidden_layers


def test_prefill_flops_are_the_analytic_counts_and_rank_the_methods(configs):
    baseline, proxyv = configs
    flops = {}
    for method in study_methods(baseline.num_hidden_layers, 36, (1.0,)):
        config = method_config(proxyv if method.checkpoint == "proxyv" else baseline, method)
        flops[method.kind] = method_prefill_flops(config, text_tokens=30, crops=2)
        parts = analytic_prefill_flops(config, 30, 2)
        assert flops[method.kind] == {"llm_flops": parts["llm_flops"], "prefill_flops": sum(parts.values())}
    assert flops["mask"] == flops["baseline"]  # a mask removes no dense computation
    for kind in ("proxyv", "visionzip", "pyramiddrop"):
        assert flops[kind]["llm_flops"] < flops["baseline"]["llm_flops"], kind


def test_a_method_without_overrides_keeps_its_checkpoint_config(configs):
    _, proxyv = configs
    assert method_config(proxyv, Method("proxyv", "proxyv", "proxyv")) is proxyv
