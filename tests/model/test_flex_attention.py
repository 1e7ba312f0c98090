"""attn_implementation="flex_attention": every masked layer runs on a block mask built from the same
rule as the dense mask, and the model equals sdpa (logits, loss, cached generation) for ProxyV with
spatial and learned proxies, both newline schemes, the masked study variant and PyramidDrop.

FlexAttention has no backward on CPU, so gradients are compared on CUDA only (with the compiled
kernel and batched generation); on CPU flex runs unfused (`llava.model.backends.flex_compile_stance`).
"""

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask

from llava.constants import IGNORE_INDEX
from llava.model import FAMILIES
from llava.model.builder import resolve_attn_implementation
from llava.model.masks import MaskRule, position_causal_rule, render_mask
from tests.model_fixtures import tiny_llava_model
from tests.proxyv_fixtures import (
    FAMILY_NAMES,
    MIXED_CROPS,
    MIXED_SAMPLES,
    baseline_twin,
    copy_with_attn,
    pad_batch,
    random_crops,
    tiny_proxyv_model,
)

PROXYV_CASES = {
    "spatial-natural": {},
    "learned-natural": {"learn_proxy": True},
    "spatial-release": {"image_newline_positions": "release"},
    "masked-variant": {"proxyv_variant": "mask_vision_attention"},
}


def _batch(device="cpu", side="right"):
    input_ids, attention_mask = pad_batch(MIXED_SAMPLES, side=side)
    labels = input_ids.masked_fill((input_ids < 0) | (attention_mask == 0), IGNORE_INDEX)
    crops = [crop.to(device) for crop in random_crops(MIXED_CROPS)]
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "images": crops, "labels": labels.to(device)}


def _pair(build, device="cpu"):
    """The same model under sdpa and flex_attention."""
    sdpa = build("sdpa").to(device)
    return sdpa, copy_with_attn(sdpa, "flex_attention").to(device)


def test_a_rule_renders_the_same_visibility_dense_and_as_a_block_mask():
    positions = torch.tensor([[0, 1, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]])  # sample 0: two tokens share position 1
    real = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    rule = position_causal_rule(positions, real)
    expected = torch.zeros(2, 6, 6, dtype=torch.bool)
    for b in range(2):
        for q in range(6):
            for k in range(6):
                expected[b, q, k] = (positions[b, k] <= positions[b, q] and bool(real[b, k])) or q == k
    assert torch.equal(rule.dense(), expected)
    block_mask = render_mask(rule, "flex_attention", torch.float32)
    assert isinstance(block_mask, BlockMask)
    grid = torch.arange(6)
    on_grid = block_mask.mask_mod(torch.arange(2)[:, None, None], 0, grid[None, :, None], grid[None, None, :])
    assert torch.equal(on_grid, expected)
    additive = render_mask(rule, "sdpa", torch.float32)
    assert additive.shape == (2, 1, 6, 6) and torch.equal(additive[:, 0] == 0, expected)


@pytest.mark.parametrize("case", list(PROXYV_CASES))
def test_proxyv_under_flex_equals_sdpa(case):
    sdpa, flex = _pair(lambda attn: tiny_proxyv_model(attn_implementation=attn, **PROXYV_CASES[case]))
    batch = _batch()
    with torch.no_grad():
        expected, got = sdpa(**batch), flex(**batch)
    torch.testing.assert_close(got.logits, expected.logits, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("family", [name for name in FAMILY_NAMES if name != "llama"])
def test_every_family_under_flex_equals_sdpa(family):
    sdpa, flex = _pair(lambda attn: tiny_proxyv_model(attn_implementation=attn, family=family, learn_proxy=True))
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(flex(**batch).logits, sdpa(**batch).logits, atol=2e-5, rtol=1e-4)
        base_sdpa, base_flex = baseline_twin(sdpa, "sdpa"), baseline_twin(sdpa, "flex_attention")
        torch.testing.assert_close(base_flex(**batch).logits, base_sdpa(**batch).logits, atol=2e-5, rtol=1e-4)


def _attention_masks_seen(model, layers, batch) -> list:
    """The `attention_mask` / ProxyV plan mask every layer in `layers` receives in one forward."""
    seen = []

    def record(module, args, kwargs):
        plan = kwargs.get("proxyv_plan")
        seen.append(plan.attention_mask if plan is not None else kwargs.get("attention_mask"))

    hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    return seen


def test_masked_layers_get_block_masks_and_no_dense_mask():
    batch = _batch()
    proxyv = tiny_proxyv_model(attn_implementation="flex_attention")
    plan_masks = _attention_masks_seen(proxyv, proxyv.model.layers[2:], batch)
    assert len(plan_masks) == 2 and plan_masks[0] is plan_masks[1]  # one plan, built once, shared
    assert isinstance(plan_masks[0], BlockMask)
    plan = proxyv.model._proxyv_plan(_layout_of(proxyv, batch), torch.float32)
    assert tuple(plan_masks[0].seq_lengths) == (plan.query_positions.shape[1], plan.key_positions.shape[1])
    for overrides in ({"image_newline_positions": "release"}, {"proxyv_variant": "mask_vision_attention"}):
        model = tiny_proxyv_model(attn_implementation="flex_attention", **overrides)
        assert all(isinstance(mask, BlockMask) for mask in _attention_masks_seen(model, model.model.layers, batch))
    pyramid = tiny_llava_model(image_size=56, attn_implementation="flex_attention", num_hidden_layers=4,
                               model_class=FAMILIES["llama"].pyramid_drop_causal_lm, pyramid_drop_layers=[1, 3])
    stage_masks = _attention_masks_seen(pyramid, pyramid.model.layers, batch)
    assert all(isinstance(mask, BlockMask) for mask in stage_masks) and len({id(m) for m in stage_masks}) == 3
    assert proxyv.model.vision_tower.vision_tower.config._attn_implementation == "sdpa"  # no mask there


def _layout_of(model, batch):
    _, _, layout = model.prepare_inputs_labels_for_multimodal(
        batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"], None, padding_side="right")
    return layout


def test_sequences_of_several_flex_blocks_equal_sdpa():
    """168-pixel crops (144 tokens each): over 400 tokens, several 128-token blocks, some empty, some full."""
    sdpa, flex = _pair(lambda attn: tiny_proxyv_model(attn_implementation=attn, image_size=168))
    batch = _batch()
    batch["images"] = random_crops(MIXED_CROPS, image_size=168)
    assert _layout_of(flex, batch).token_kind.shape[1] > 3 * 128
    with torch.no_grad():
        torch.testing.assert_close(flex(**batch).logits, sdpa(**batch).logits, atol=2e-5, rtol=1e-4)


def test_baseline_and_pyramid_drop_under_flex_equal_sdpa():
    batch = _batch()
    proxyv = tiny_proxyv_model(attn_implementation="sdpa")
    for build in (lambda attn: baseline_twin(proxyv, attn),
                  lambda attn: tiny_llava_model(image_size=56, attn_implementation=attn, num_hidden_layers=4,
                                                model_class=FAMILIES["llama"].pyramid_drop_causal_lm,
                                                pyramid_drop_layers=[1, 3], pyramid_drop_ratio=0.5)):
        sdpa, flex = _pair(build)
        with torch.no_grad():
            expected, got = sdpa(**batch), flex(**batch)
        torch.testing.assert_close(got.logits, expected.logits, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("case", [*PROXYV_CASES, "pyramid-drop"])
def test_cached_generation_of_a_padded_batch_under_flex_equals_sdpa(case):
    if case == "pyramid-drop":
        sdpa, flex = _pair(lambda attn: tiny_llava_model(
            image_size=56, attn_implementation=attn, num_hidden_layers=4, pyramid_drop_layers=[1, 3],
            model_class=FAMILIES["llama"].pyramid_drop_causal_lm))
    else:
        sdpa, flex = _pair(lambda attn: tiny_proxyv_model(attn_implementation=attn, **PROXYV_CASES[case]))
    prompt = _batch(side="left")
    settings = {"attention_mask": prompt["attention_mask"], "images": prompt["images"], "max_new_tokens": 4,
                "do_sample": False, "use_cache": True}
    assert torch.equal(flex.generate(prompt["input_ids"], **settings), sdpa.generate(prompt["input_ids"], **settings))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA; compiled flex runs there")
@pytest.mark.parametrize("case", list(PROXYV_CASES))
def test_gradients_and_batched_generation_under_flex_equal_sdpa_on_cuda(case):
    sdpa, flex = _pair(lambda attn: tiny_proxyv_model(attn_implementation=attn, **PROXYV_CASES[case]), "cuda")
    batch = _batch("cuda")
    for model in (sdpa, flex):
        model.train()
        model(**batch).loss.backward()
        model.eval()
    for (name, expected), got in zip(sdpa.named_parameters(), flex.parameters()):
        if expected.grad is not None:
            torch.testing.assert_close(got.grad, expected.grad, atol=1e-4, rtol=1e-3, msg=name)
    prompt = _batch("cuda", side="left")
    settings = {"attention_mask": prompt["attention_mask"], "images": prompt["images"], "max_new_tokens": 4,
                "do_sample": False}
    assert torch.equal(flex.generate(prompt["input_ids"], **settings), sdpa.generate(prompt["input_ids"], **settings))


def test_flex_attention_refuses_gradients_on_cpu_clearly():
    model = tiny_proxyv_model(attn_implementation="flex_attention").train()
    with pytest.raises(ValueError, match="FlexAttention has no backward on CPU.*sdpa"):
        model(**_batch())
    model.eval()  # eval mode with gradients on is refused the same way
    with pytest.raises(ValueError, match="FlexAttention has no backward on CPU"):
        model(**_batch())
    with torch.no_grad():  # a forward without gradients (evaluation during training) is fine
        model.train()(**_batch())


def test_builder_accepts_flex_and_uses_it_for_masked_configs_under_flash(monkeypatch):
    config = tiny_proxyv_model().config
    assert resolve_attn_implementation("flex_attention", config) == "flex_attention"
    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda: True)
    config.image_newline_positions = "release"
    assert resolve_attn_implementation("flash_attention_2", config) == "flex_attention"
    config.image_newline_positions = "natural"
    assert resolve_attn_implementation("flash_attention_2", config) == "flash_attention_2"


def test_mask_rule_shapes_follow_the_rule():
    rule = MaskRule(1, 2, 3, lambda b, q, kv: kv <= q, torch.device("cpu"))
    assert rule.dense().tolist() == [[[True, False, False], [True, True, False]]]
