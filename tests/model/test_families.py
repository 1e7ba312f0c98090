"""ProxyV and the baseline on every decoder family: Mistral, Qwen2, Qwen3 and Phi-3 next to Llama.

The Llama family has the full matrix in `test_proxyv.py`; here the same plain reference (which
knows each family's parameter layout: Qwen2's q/k/v biases, Qwen3's per-head q/k norms, Phi-3's
fused qkv and gate_up projections) checks the other families: ProxyV vs the reference (spatial and
learned proxies, several start layers, a mixed batch), `s = L` equals the family's baseline,
eager == sdpa, cached greedy generation == recomputation (single and batched), gradients vs the
reference, a save -> `load_pretrained_model` round trip, and PyramidDrop / the study variants.
"""

import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from llava.mm_utils import process_images
from llava.model import FAMILIES
from llava.model.builder import load_pretrained_model
from tests.model.test_proxyv import (
    ATOL,
    GEN_CROPS,
    GEN_SAMPLES,
    MIXED_SAMPLES,
    assert_batch_matches_reference,
    generate,
    greedy_by_recomputation,
    mixed_batch,
    reference_forward,
)
from tests.proxyv_fixtures import (
    IMAGE_SIZE,
    NUM_LAYERS,
    baseline_twin,
    copy_with_attn,
    expanded_length,
    pad_batch,
    random_crops,
    save_clip_folder,
    split_crops_by_sample,
    tiny_proxyv_config,
    tiny_proxyv_model,
    tiny_word_tokenizer,
)

OTHER_FAMILIES = ("mistral", "qwen2", "qwen3", "phi3")
# A parameter only that family's layout has: proof the family's own decoder was built.
FAMILY_MARKER = {
    "mistral": "model.layers.0.self_attn.q_proj.weight",
    "qwen2": "model.layers.0.self_attn.q_proj.bias",
    "qwen3": "model.layers.0.self_attn.q_norm.weight",
    "phi3": "model.layers.0.self_attn.qkv_proj.weight",
}


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_family_builds_its_own_decoder(family):
    model = tiny_proxyv_model(seed=1, family=family)
    names = dict(model.named_parameters())
    assert FAMILY_MARKER[family] in names
    assert type(model) is FAMILIES[family].proxyv_causal_lm
    assert type(model.model.layers[2]) is FAMILIES[family].proxyv_layer
    assert isinstance(model.model.layers[2], FAMILIES[family].family.decoder_layer)


@pytest.mark.parametrize("family", OTHER_FAMILIES)
@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
@pytest.mark.parametrize("start", [0, 2])
def test_family_matches_reference_on_mixed_batch(family, start, learn_proxy):
    model = tiny_proxyv_model(seed=start, proxyv_start_layer=start, learn_proxy=learn_proxy, family=family,
                              image_newline_positions="release" if learn_proxy else "natural")
    _randomise_biases(model)
    ids, mask, crops = mixed_batch()
    assert_batch_matches_reference(model, ids, mask, crops, MIXED_SAMPLES)


@pytest.mark.parametrize("family", OTHER_FAMILIES)
@pytest.mark.parametrize("scheme", ["natural", "release"])
def test_family_start_layer_equal_to_depth_is_the_baseline(family, scheme):
    model = tiny_proxyv_model(seed=11, proxyv_start_layer=NUM_LAYERS, family=family, image_newline_positions=scheme)
    baseline = baseline_twin(model)
    assert type(baseline) is FAMILIES[family].causal_lm
    ids, mask, crops = mixed_batch()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, images=crops, labels=labels, use_cache=False)
        theirs = baseline(input_ids=ids, attention_mask=mask, images=crops, labels=labels, use_cache=False)
        expected, _ = reference_forward(model, MIXED_SAMPLES[0], split_crops_by_sample(MIXED_SAMPLES, crops)[0])
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(theirs.logits[0, : expected.shape[0]], expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_family_eager_and_sdpa_agree(family):
    eager = tiny_proxyv_model(seed=21, proxyv_start_layer=1, family=family, learn_proxy=True)
    sdpa = copy_with_attn(eager, "sdpa")
    ids, mask, crops = mixed_batch()
    with torch.no_grad():
        expected = eager(input_ids=ids, attention_mask=mask, images=crops, use_cache=False).logits
        got = sdpa(input_ids=ids, attention_mask=mask, images=crops, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_family_greedy_generation_cache_equals_recomputation(family):
    model = tiny_proxyv_model(seed=42, proxyv_start_layer=2, family=family, image_newline_positions="release")
    crops = random_crops(GEN_CROPS, seed=6)
    per_sample = split_crops_by_sample(GEN_SAMPLES, crops)
    expected = [greedy_by_recomputation(model, s, imgs) for s, imgs in zip(GEN_SAMPLES, per_sample)]
    single = torch.tensor([GEN_SAMPLES[0]])
    assert generate(model, single, torch.ones_like(single), per_sample[0], use_cache=True).tolist() == [expected[0]]
    ids, mask = pad_batch(GEN_SAMPLES, "left")
    assert generate(model, ids, mask, crops, use_cache=True).tolist() == expected
    assert generate(model, ids, mask, crops, use_cache=False).tolist() == expected


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_family_gradients_match_reference(family):
    model = tiny_proxyv_model(seed=33, proxyv_start_layer=1, learn_proxy=True, family=family).train()
    _randomise_biases(model)
    sample, images = MIXED_SAMPLES[0], random_crops([3], seed=4)
    weights = torch.randn(expanded_length(sample, [3]), model.config.vocab_size,
                          generator=torch.Generator().manual_seed(0))

    def grads_of(logits):
        model.zero_grad(set_to_none=True)
        (logits * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected = grads_of(reference_forward(model, sample, images)[0])
    got = grads_of(model(input_ids=torch.tensor([sample]), images=images, use_cache=False).logits[0])
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_family_save_and_load_round_trip(family, tmp_path):
    """Our save of a ProxyV model of each family reloads through the builder to the same logits."""
    clip_dir = save_clip_folder(tmp_path / "clip", seed=5, image_size=IMAGE_SIZE)
    model = tiny_proxyv_model(seed=51, proxyv_start_layer=1, family=family, learn_proxy=True,
                              mm_vision_tower=str(clip_dir))
    model.save_pretrained(tmp_path / "ckpt")
    tiny_word_tokenizer().save_pretrained(tmp_path / "ckpt")
    _, loaded, processor, _ = load_pretrained_model(str(tmp_path / "ckpt"), device="cpu", attn_implementation="eager")
    assert type(loaded) is type(model)
    assert loaded.config.model_type == FAMILIES[family].family.proxyv_model_type
    image = Image.new("RGB", (90, 40), (200, 30, 60))
    pixels = process_images([image], processor, loaded.config)
    ids = torch.tensor([[1, 5, -200, 6, 7]])
    with torch.no_grad():
        expected = model(input_ids=ids, images=pixels, image_sizes=[image.size], use_cache=False).logits
        got = loaded(input_ids=ids, images=pixels, image_sizes=[image.size], use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def _randomise_biases(model) -> None:
    """Qwen2's q/k/v biases start at zero; give them values so a dropped bias shows in the logits."""
    generator = torch.Generator().manual_seed(77)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_proj.bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def test_authors_phi3_learned_config_keeps_their_spatial_guidance(tmp_path):
    """The authors' Phi-3 release copies learned proxies back spatially (their file calls the update
    without `learn_proxy`); their configs load that way, ours keep A P, and a save keeps the choice."""
    values = tiny_proxyv_model(seed=3, family="phi3", learn_proxy=True).config.to_dict()
    for key in ("model_type", "image_newline_positions", "learned_proxy_guidance"):
        values.pop(key)
    authors = FAMILIES["phi3"].config(**values)  # `llava_phi` with proxyv: true, as their config.json
    proxyv = FAMILIES["phi3"].proxyv_config(**{k: v for k, v in authors.to_dict().items() if k != "model_type"})
    assert (proxyv.image_newline_positions, proxyv.learned_proxy_guidance) == ("release", "spatial")
    qwen = FAMILIES["qwen2"].proxyv_config(**{**{k: v for k, v in values.items() if k != "proxyv"}, "proxyv": True})
    assert qwen.learned_proxy_guidance == "assignment"  # their Qwen2 file passes learn_proxy
    assert tiny_proxyv_config(family="phi3", learn_proxy=True).learned_proxy_guidance == "assignment"
    proxyv.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).learned_proxy_guidance == "spatial"


WINDOWS = {
    "mistral": {"sliding_window": 8},
    "phi3": {"sliding_window": 8},
    "qwen2": {"sliding_window": 8, "use_sliding_window": True, "max_window_layers": 0},
    "qwen3": {"sliding_window": 8, "layer_types": ["sliding_attention"] * NUM_LAYERS},  # as a saved config lists them
}


@pytest.mark.parametrize("family", sorted(WINDOWS))
def test_llm_sliding_window_is_recorded_and_not_applied(family):
    """A window shorter than the sequence: ProxyV at s = L is still the baseline, cached greedy
    decoding equals recomputation, and both equal the windowless reference."""
    model = tiny_proxyv_model(seed=61, proxyv_start_layer=NUM_LAYERS, family=family, **WINDOWS[family])
    assert model.config.sliding_window is None and model.config.llm_sliding_window == 8
    assert set(getattr(model.config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    baseline = baseline_twin(model)
    assert baseline.config.llm_sliding_window == 8
    sample, images = GEN_SAMPLES[0], random_crops([3], seed=5)  # 3 crops: far longer than 8 tokens
    ids = torch.tensor([sample])
    with torch.no_grad():
        expected, _ = reference_forward(model, sample, images)
        got = baseline(input_ids=ids, images=images, use_cache=False).logits[0]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    greedy = greedy_by_recomputation(baseline, sample, images)
    assert generate(baseline, ids, torch.ones_like(ids), images, use_cache=True).tolist() == [greedy]


def test_visionzip_refuses_the_spatial_copy_back():
    with pytest.raises(ValueError, match="learned_proxy_guidance 'spatial'"):
        tiny_proxyv_config(family="phi3", learn_proxy=True, learned_proxy_guidance="spatial",
                           vision_token_reduction="visionzip", visionzip_dominant=6, visionzip_contextual=2)


def test_converted_internlm2_runs_proxyv_like_the_reference(tmp_path):
    """InternLM2.5's route: its checkpoint converted to the Llama layout (llava.tools.convert_internlm2)
    builds a ProxyV LLaVA that matches the reference and decodes with its cache like recomputation."""
    from llava.model.assemble import build_llava_from_llm
    from tests.tools.test_convert_internlm2 import (
        convert,
        internlm2_config,
        internlm2_weights,
        write_checkpoint,
    )

    config = internlm2_config(max_position_embeddings=4096, num_hidden_layers=3)
    src = write_checkpoint(tmp_path / "src", config, internlm2_weights(config, seed=4))
    assert convert(src, tmp_path / "llm") == 0
    clip = save_clip_folder(tmp_path / "clip", seed=2, image_size=IMAGE_SIZE)
    torch.manual_seed(8)  # the projector starts from the global generator: same model whatever ran before
    model = build_llava_from_llm(str(tmp_path / "llm"), str(clip), proxyv_start_layer=1, attn_implementation="eager",
                                 proxyv_reduce_factor=2, per_crop_token_len=16, learn_proxy=True).eval()
    assert type(model) is FAMILIES["llama"].proxyv_causal_lm
    ids, mask, crops = mixed_batch()
    assert_batch_matches_reference(model, ids, mask, crops, MIXED_SAMPLES)
    sample, images = GEN_SAMPLES[0], random_crops([3], seed=5)
    single = torch.tensor([sample])
    expected = greedy_by_recomputation(model, sample, images)
    eos = config["eos_token_id"]  # the converted config keeps it, so generate stops there
    if eos in expected:
        expected = expected[: expected.index(eos) + 1]
    assert generate(model, single, torch.ones_like(single), images, use_cache=True).tolist() == [expected]


def test_fused_qkv_slices_its_weight_and_calls_the_module_under_zero3():
    """Phi-3's fused projection: weight slices normally; under ZeRO-3 (a partitioned weight carries
    `ds_id`, and only the module's own call gathers it) the whole module is called; the same heads."""
    from llava.model.attention import FusedQKVProjection

    model = tiny_proxyv_model(seed=71, family="phi3")
    attn, projection = model.model.layers[0].self_attn, FusedQKVProjection()
    states = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    calls = []
    hook = attn.qkv_proj.register_forward_hook(lambda module, args, output: calls.append(output.shape[-1]))
    sliced = (projection.queries(attn, states), *projection.keys_values(attn, states))
    assert calls == []  # sliced: the module itself never ran
    attn.qkv_proj.weight.ds_id = 0  # what DeepSpeed ZeRO-3 marks a partitioned parameter with
    try:
        whole = (projection.queries(attn, states), *projection.keys_values(attn, states))
    finally:
        del attn.qkv_proj.weight.ds_id
        hook.remove()
    assert len(calls) == 2
    for got, expected in zip(whole, sliced):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_tied_embeddings_save_and_load(tmp_path):
    """Small Qwen2 / Qwen3 models tie the LM head to the embeddings: saved once, loaded tied."""
    clip_dir = save_clip_folder(tmp_path / "clip", seed=5, image_size=IMAGE_SIZE)
    model = tiny_proxyv_model(seed=52, family="qwen2", tie_word_embeddings=True, mm_vision_tower=str(clip_dir))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path / "ckpt")
    tiny_word_tokenizer().save_pretrained(tmp_path / "ckpt")
    _, loaded, _, _ = load_pretrained_model(str(tmp_path / "ckpt"), device="cpu", attn_implementation="eager")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)
