"""The paper's study variants (docs/design.md §4.8), against plain references.

The references loop over the layers of one unpadded sample by hand (helpers of `test_proxyv`):
* `mask_vision_attention`: every layer ordinary; from `s` the visibility matrix, written here,
  drops vision-to-vision pairs except a token's own key;
* `skip_vision_attention`: from `s` only text/newline rows are queries (over every earlier key);
  vision rows get `h + FFN(post_norm(h))`;
* `vision_mlp`: as above, but vision rows get `RMSNorm_post(W_2 SiLU(W_1 h) + h)`.
"""

import json

import pytest
import torch
from transformers import AutoConfig

from llava.errors import UsageError
from llava.eval.prefill_benchmark import main as benchmark_main
from llava.eval.presets import load_model_spec
from llava.eval.run_llava import build_prompt
from llava.mm_utils import load_image, tokenizer_image_token
from llava.model import LlavaConfig, LlavaProxyVConfig, LlavaProxyVLlamaForCausalLM
from llava.model.builder import load_pretrained_model
from llava.model.proxyv.modules import UnguidedVisionMLP
from llava.model.proxyv.study import start_layer_for_mask_ratio
from llava.serve.inference import pixels_for_model
from llava.train.train import train
from tests.model.test_proxyv import (
    FULL,
    GEN_CROPS,
    GEN_SAMPLES,
    _loss_and_grads,
    attention,
    build_sequence,
    ffn,
    generate,
    greedy_by_recomputation,
    rms_norm,
)
from tests.proxyv_fixtures import (
    FAMILY_NAMES,
    MIXED_CROPS,
    MIXED_SAMPLES,
    NUM_LAYERS,
    baseline_twin,
    pad_batch,
    random_crops,
    split_crops_by_sample,
    tiny_proxyv_config,
    tiny_proxyv_model,
)

VARIANTS = ("mask_vision_attention", "skip_vision_attention", "vision_mlp")
ATOL = 1e-5


# ----------------------------------------------------------------------------- the reference


def reference_layer(model, index, hidden, kinds, positions):
    """Layer `index` of the configured variant on one sample [T, D]."""
    config, layer = model.model.config, model.model.layers[index]
    eps, variant = config.rms_norm_eps, config.proxyv_variant
    studied = index >= config.proxyv_start_layer
    is_vision = torch.tensor([kind == FULL for kind in kinds])
    visible = positions[None, :] <= positions[:, None]  # [T, T] causal by position
    if studied and variant == "mask_vision_attention":
        visible = visible & ~(is_vision[:, None] & is_vision[None, :] & ~torch.eye(len(kinds), dtype=torch.bool))
    queries = ~is_vision if studied and variant != "mask_vision_attention" else torch.ones_like(is_vision)
    normed = rms_norm(hidden, layer.input_layernorm.weight, eps)
    out, _, _ = attention(layer, config, normed[queries], positions[queries], normed, positions, visible[queries])
    new = hidden.clone()
    new[queries] = hidden[queries] + out
    new[queries] = new[queries] + ffn(layer, rms_norm(new[queries], layer.post_attention_layernorm.weight, eps))
    if not studied or variant == "mask_vision_attention":
        return new
    vision = hidden[is_vision]
    if variant == "skip_vision_attention":
        new[is_vision] = vision + ffn(layer, rms_norm(vision, layer.post_attention_layernorm.weight, eps))
    else:
        mlp = model.model.vision_mlp_layers[index - config.proxyv_start_layer]
        update = torch.nn.functional.silu(vision @ mlp.input_proj.weight.T) @ mlp.output_proj.weight.T
        new[is_vision] = rms_norm(update + vision, mlp.layernorm_post.weight, eps)
    return new


def reference_logits(model, sample, images):
    hidden, kinds, positions, _ = build_sequence(model, sample, images, model.config.image_newline_positions)
    for index in range(model.config.num_hidden_layers):
        hidden = reference_layer(model, index, hidden, kinds, positions)
    return model.lm_head(rms_norm(hidden, model.model.norm.weight, model.config.rms_norm_eps))


def assert_matches_reference(model):
    ids, mask = pad_batch(MIXED_SAMPLES, "right")
    crops = random_crops(MIXED_CROPS, seed=3)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, images=crops, use_cache=False).logits
        for b, (sample, images) in enumerate(zip(MIXED_SAMPLES, split_crops_by_sample(MIXED_SAMPLES, crops))):
            expected = reference_logits(model, sample, images)
            torch.testing.assert_close(logits[b, : expected.shape[0]], expected, atol=ATOL, rtol=1e-5)


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scheme", ["natural", "release"])
def test_variant_matches_reference(variant, scheme, family):
    model = tiny_proxyv_model(seed=11, proxyv_start_layer=1, proxyv_variant=variant, image_newline_positions=scheme,
                              family=family)
    assert_matches_reference(model)


def test_masked_variant_differs_from_baseline_and_keeps_its_weights():
    """The reference is not vacuous: masking changes the logits; the variant adds no weights."""
    model = tiny_proxyv_model(seed=12, proxyv_start_layer=1, proxyv_variant="mask_vision_attention")
    baseline = baseline_twin(model)
    assert len(model.model.vision_mlp_layers) == 0
    assert set(model.state_dict()) == set(baseline.state_dict())
    ids, mask = pad_batch(MIXED_SAMPLES[:1], "right")
    crops = random_crops(MIXED_CROPS[:1], seed=3)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, images=crops).logits
        theirs = baseline(input_ids=ids, attention_mask=mask, images=crops).logits
    assert (ours - theirs).abs().max() > 1e-3


def test_vision_mlp_variant_has_unguided_mlps():
    model = tiny_proxyv_model(seed=13, proxyv_start_layer=1, proxyv_variant="vision_mlp")
    mlps = model.model.vision_mlp_layers
    assert len(mlps) == NUM_LAYERS - 1 and all(isinstance(m, UnguidedVisionMLP) for m in mlps)
    assert tuple(mlps[0].input_proj.weight.shape) == (32, 64)  # d -> d_m (d < 1024: d // 2)
    assert tuple(mlps[0].output_proj.weight.shape) == (64, 32)
    skip = tiny_proxyv_model(seed=13, proxyv_start_layer=1, proxyv_variant="skip_vision_attention")
    assert len(skip.model.vision_mlp_layers) == 0 and not hasattr(skip.model, "proxyv_initializer")


def test_sdpa_matches_eager():
    for variant in VARIANTS:
        eager = tiny_proxyv_model(seed=14, proxyv_start_layer=2, proxyv_variant=variant)
        sdpa = tiny_proxyv_model(seed=14, attn_implementation="sdpa", proxyv_start_layer=2, proxyv_variant=variant)
        ids, mask = pad_batch(MIXED_SAMPLES, "right")
        crops = random_crops(MIXED_CROPS, seed=3)
        with torch.no_grad():
            a = eager(input_ids=ids, attention_mask=mask, images=crops).logits
            b = sdpa(input_ids=ids, attention_mask=mask, images=crops).logits
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_with_cache_equals_without(variant, family):
    model = tiny_proxyv_model(seed=21, proxyv_start_layer=1, proxyv_variant=variant, family=family)
    sample, images = GEN_SAMPLES[0], random_crops([3], seed=5)
    expected = greedy_by_recomputation(model, sample, images)
    ids = torch.tensor([sample])
    assert generate(model, ids, torch.ones_like(ids), images, use_cache=True).tolist() == [expected]
    assert generate(model, ids, torch.ones_like(ids), images, use_cache=False).tolist() == [expected]


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_left_padded_generation_equals_recomputation(variant):
    model = tiny_proxyv_model(seed=22, proxyv_start_layer=2, proxyv_variant=variant, image_newline_positions="release")
    crops = random_crops(GEN_CROPS, seed=6)
    per_sample = split_crops_by_sample(GEN_SAMPLES, crops)
    expected = [greedy_by_recomputation(model, s, imgs) for s, imgs in zip(GEN_SAMPLES, per_sample)]
    ids, mask = pad_batch(GEN_SAMPLES, "left")
    assert generate(model, ids, mask, crops, use_cache=True).tolist() == expected
    assert generate(model, ids, mask, crops, use_cache=False).tolist() == expected


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("ratio", "layers", "start"), [
    (0.0, 32, 32), (0.25, 32, 24), (0.5, 32, 16), (0.75, 32, 8), (1.0, 32, 0), (1, 4, 0),
    (0.125, 4, 3),  # 0.5 layers rounds up to 1
    (0.3, 4, 3),  # 1.2 -> 1
])
def test_mask_ratio_maps_to_start_layer(ratio, layers, start):
    assert start_layer_for_mask_ratio(ratio, layers) == start
    if layers == NUM_LAYERS:
        config = tiny_proxyv_config(proxyv_start_layer=None, proxyv_variant="mask_vision_attention",
                                    vision_mask_ratio=ratio)
        assert config.proxyv_start_layer == start


def test_config_round_trips(tmp_path):
    config = tiny_proxyv_config(proxyv_start_layer=None, proxyv_variant="mask_vision_attention", vision_mask_ratio=0.5)
    config.save_pretrained(tmp_path)
    loaded = LlavaProxyVConfig.from_pretrained(tmp_path)
    assert (loaded.proxyv_variant, loaded.vision_mask_ratio, loaded.proxyv_start_layer) == (
        "mask_vision_attention", 0.5, 2)
    assert tiny_proxyv_config().proxyv_variant == "proxyv"  # default: ProxyV itself


@pytest.mark.parametrize(("options", "message"), [
    ({"proxyv_variant": "mask"}, "proxyv_variant must be one of"),
    ({"proxyv_variant": "vision_mlp", "learn_proxy": True}, "learn_proxy applies to proxyv_variant 'proxyv' only"),
    ({"proxyv_variant": "vision_mlp", "vision_mask_ratio": 0.5}, "vision_mask_ratio applies to"),
    ({"proxyv_variant": "mask_vision_attention", "vision_mask_ratio": 1.5}, r"must be in \[0, 1\]"),
    ({"proxyv_variant": "mask_vision_attention", "vision_mask_ratio": 0.5, "proxyv_start_layer": 1},
     "give only one of them"),
])
def test_invalid_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        tiny_proxyv_config(**{"proxyv_start_layer": None, **options})


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("variant", ["skip_vision_attention", "vision_mlp"])
def test_few_training_steps_then_answer(variant):
    """A few AdamW steps on a labelled batch lower the loss; the trained model generates the same with
    and without cache."""
    model = tiny_proxyv_model(seed=31, proxyv_start_layer=2, proxyv_variant=variant).train()
    ids, mask = pad_batch(MIXED_SAMPLES, "right")
    labels = ids.masked_fill(mask == 0, -100)
    crops = random_crops(MIXED_CROPS, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, attention_mask=mask, images=crops, labels=labels).loss
        loss.backward()
        if variant == "vision_mlp":
            assert model.model.vision_mlp_layers[0].input_proj.weight.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    sample, images = GEN_SAMPLES[0], random_crops([2], seed=5)
    ids = torch.tensor([sample])
    cached = generate(model, ids, torch.ones_like(ids), images, use_cache=True)
    assert cached.tolist() == generate(model, ids, torch.ones_like(ids), images, use_cache=False).tolist()
    assert cached.shape[1] > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_checkpointing_gives_same_loss_and_grads(variant):
    plain = tiny_proxyv_model(seed=32, proxyv_start_layer=1, proxyv_variant=variant)
    checkpointed = tiny_proxyv_model(seed=32, proxyv_start_layer=1, proxyv_variant=variant)
    loss, grads = _loss_and_grads(plain, checkpointing=False)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------- end to end on the tiny assets


def _tiny_answer_ids(model, tokenizer, processor, assets, use_cache):
    """Greedy ids of the tiny model's answer about the example image (`answer`'s inputs, our cache flag)."""
    image = load_image(assets.example_image())
    prompt = build_prompt("What color is the background?", 1, "vicuna_v1")
    input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    return model.generate(input_ids, images=pixels_for_model([image], processor, model), image_sizes=[image.size],
                          max_new_tokens=5, do_sample=False, use_cache=use_cache,
                          pad_token_id=tokenizer.pad_token_id)


@pytest.mark.parametrize("variant", ["skip_vision_attention", "vision_mlp"])
def test_train_py_trains_variant_and_the_checkpoint_answers(tiny_assets, tmp_path, variant):
    """`train.py --proxyv_variant` (in-process, 2 steps) saves the variant in the config; loading picks it."""
    out = tmp_path / variant
    train([
        "--model_name_or_path", str(tiny_assets.llm), "--vision_tower", str(tiny_assets.clip),
        "--version", "v1", "--data_path", str(tiny_assets.instruct), "--image_folder", str(tiny_assets.data),
        "--output_dir", str(out), "--report_to", "none", "--dataloader_num_workers", "0", "--max_steps", "2",
        "--per_device_train_batch_size", "1", "--learning_rate", "1e-3", "--save_strategy", "no",
        "--model_max_length", "8192", "--mm_tunable_parts", "mm_mlp_adapter,mm_vision_mlp,mm_language_model",
        "--proxyv_start_layer", "1", "--proxyv_reduce_factor", "2", "--proxyv_variant", variant,
    ])
    tokenizer, model, processor, _ = load_pretrained_model(str(out), None, None, device="cpu")
    assert isinstance(model, LlavaProxyVLlamaForCausalLM)
    assert (model.config.proxyv_variant, model.config.proxyv_start_layer) == (variant, 1)
    cached = _tiny_answer_ids(model, tokenizer, processor, tiny_assets, use_cache=True)
    assert cached.tolist() == _tiny_answer_ids(model, tokenizer, processor, tiny_assets, use_cache=False).tolist()


def test_train_py_refuses_a_variant_it_would_ignore(tiny_assets, tmp_path):
    with pytest.raises(ValueError, match="--proxyv_variant vision_mlp applies when training from a language model"):
        train(["--model_name_or_path", str(tiny_assets.llava), "--data_path", str(tiny_assets.instruct),
               "--output_dir", str(tmp_path), "--report_to", "none", "--proxyv_variant", "vision_mlp"])


def test_baseline_checkpoint_runs_training_free_masking(tiny_assets):
    """An existing baseline checkpoint loads as `mask_vision_attention` through `customized_config`."""
    config = AutoConfig.from_pretrained(tiny_assets.llava)
    values = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    custom = LlavaProxyVConfig(**values, proxyv_variant="mask_vision_attention", vision_mask_ratio=0.5)
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_assets.llava), None, None, device="cpu",
                                                           customized_config=custom)
    _, baseline, _, _ = load_pretrained_model(str(tiny_assets.llava), None, None, device="cpu")
    assert model.config.proxyv_start_layer == config.num_hidden_layers - round(0.5 * config.num_hidden_layers)
    torch.testing.assert_close(model.state_dict(), baseline.state_dict())  # no new weights, all loaded
    cached = _tiny_answer_ids(model, tokenizer, processor, tiny_assets, use_cache=True)
    assert cached.tolist() == _tiny_answer_ids(model, tokenizer, processor, tiny_assets, use_cache=False).tolist()


def test_customized_config_may_be_a_json_path(tiny_assets, tmp_path):
    """lmms-eval's `--model_args customized_config=x.json` passes a path: it loads as the config object does."""
    config = AutoConfig.from_pretrained(tiny_assets.llava)
    values = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    custom = LlavaProxyVConfig(**values, proxyv_variant="mask_vision_attention", vision_mask_ratio=0.5)
    custom.to_json_file(tmp_path / "custom.json")
    _, from_object, _, _ = load_pretrained_model(str(tiny_assets.llava), None, None, device="cpu",
                                                 customized_config=custom)
    _, from_path, _, _ = load_pretrained_model(str(tiny_assets.llava), None, None, device="cpu",
                                               customized_config=str(tmp_path / "custom.json"))
    assert type(from_path) is type(from_object) is LlavaProxyVLlamaForCausalLM
    assert from_path.config.to_dict() == from_object.config.to_dict()
    with pytest.raises(UsageError, match="customized_config .*missing.json does not exist"):
        load_pretrained_model(str(tiny_assets.llava), None, None, device="cpu",
                              customized_config=str(tmp_path / "missing.json"))


# ----------------------------------------------------------------------------- benchmark rows


def test_benchmark_rows_at_the_middle_layer(tmp_path):
    """Rows for each study variant at s = depth // 2; LLM FLOPs equal a per-layer count written here."""
    path = tmp_path / "rows.json"
    assert benchmark_main(["--model", "tiny", "--device", "meta", "--proxyv-start-layers", "2", "--variants",
                           ",".join(VARIANTS), "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    spec, setting = load_model_spec("tiny"), result["setting"]
    values = spec.llava_values
    d, ff = values["hidden_size"], values["intermediate_size"]
    d_kv = d // values["num_attention_heads"] * values["num_key_value_heads"]
    total, vision = setting["sequence_length"], setting["crops"] * setting["tokens_per_crop"]
    light, depth = total - vision, spec.num_layers

    def layer(queries, ffn_tokens, extra=0):  # q/o on queries, k/v on all, attention queries x all, FFN
        return 4 * queries * d * d + 4 * total * d * d_kv + 4 * queries * total * d + 6 * ffn_tokens * d * ff + extra

    dense = layer(total, total)
    expected = {
        "baseline": (None, depth * dense),
        "mask_vision_attention": (depth // 2, depth * dense),  # a mask saves nothing in dense attention
        "skip_vision_attention": (depth // 2, depth // 2 * (dense + layer(light, total))),
        "vision_mlp": (depth // 2, depth // 2 * (dense + layer(light, light, 4 * vision * d * (d // 2)))),
    }
    rows = {row["variant"]: (row["proxyv_start_layer"], row["llm_flops"]) for row in result["rows"]}
    assert rows == expected
    assert all(row["llm_flops_analytic"] == row["llm_flops"] for row in result["rows"])  # llava.eval.flops agrees


@pytest.mark.parametrize("key_value", [{"proxyv_variant": "mask_vision_attention"}, {"vision_mask_ratio": 0.5}])
def test_study_options_on_a_baseline_config_are_refused(key_value):
    """A plain LlavaConfig would silently run the baseline with them."""
    with pytest.raises(ValueError, match="options of the ProxyV decoder"):
        LlavaConfig(hidden_size=64, **key_value)
