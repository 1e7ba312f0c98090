"""The baseline `LlavaLlamaForCausalLM` against plain references built in this file.

* Natural scheme: per sample (batch of one, no padding), transformers' plain `LlamaForCausalLM` with
  the same decoder weights on `inputs_embeds` assembled by hand (text embeddings; per crop the CLIP
  layer -2 patch features through the projector, written out as matrix products; then the newline).
* Release scheme: a Llama decoder written out layer by layer here (RMSNorm, RoPE at the given
  position ids, GQA attention with an explicit mask "key visible iff position_k <= position_q",
  SwiGLU), first checked against `LlamaForCausalLM` on natural positions.
* Generation: a greedy loop that recomputes the full forward every step.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.builder import load_pretrained_model
from tests.model_fixtures import (
    EOS_ID,
    PAD_ID,
    multimodal_keys,
    plain_llama_config,
    random_images,
    save_tiny_checkpoint,
    save_tiny_clip,
    tiny_llava_config,
    tiny_llava_model,
    tiny_vision_config,
)

IMG = IMAGE_TOKEN_INDEX
SMALL = 56  # 4x4 grid: 16 tokens per crop, for the tests that only need the layout's shape

# (a) one 3-crop image mid-text, (b) two images with 1 and 5 crops, (c) text only.
SAMPLES = [
    {"tokens": [1, 5, 6, IMG, 7, 8, 9], "labels": [-100, -100, -100, -100, 7, 8, 9], "crops": [3]},
    {"tokens": [1, IMG, 10, 11, IMG, 12], "labels": [-100, -100, -100, -100, -100, 12], "crops": [1, 5]},
    {"tokens": [1, 13, 14, 15, 16, 17, 18], "labels": [-100, 13, 14, -100, 16, 17, 18], "crops": []},
]


def padded_batch(samples, side="right", extra=2):
    """(input_ids, attention_mask, labels) padded with PAD_ID; padding labels are junk on purpose."""
    length = max(len(s["tokens"]) for s in samples) + extra
    ids = torch.full((len(samples), length), PAD_ID)
    mask = torch.zeros(len(samples), length, dtype=torch.long)
    labels = torch.full((len(samples), length), 21)
    for b, s in enumerate(samples):
        n = len(s["tokens"])
        span = slice(length - n, length) if side == "left" else slice(0, n)
        ids[b, span] = torch.tensor(s["tokens"])
        mask[b, span] = 1
        if "labels" in s:
            labels[b, span] = torch.tensor(s["labels"])
    return ids, mask, labels


def sample_images(samples, seed=0, image_size=336):
    counts = [c for s in samples for c in s["crops"]]
    images = random_images(counts, seed=seed, image_size=image_size)
    per_sample, start = [], 0
    for s in samples:
        per_sample.append(images[start : start + len(s["crops"])])
        start += len(s["crops"])
    return images, per_sample


@torch.no_grad()
def reference_inputs(model, tokens, labels, images):
    """Hand-built inputs for one unpadded sample: embeds [T, D], natural and release positions [T], labels [T]."""
    inner = model.model
    clip = inner.vision_tower.vision_tower  # a plain transformers CLIPVisionModel
    proj = inner.mm_projector  # Linear -> GELU -> Linear
    rows, natural, release, out_labels = [], [], [], []
    images = iter(images)
    labels = labels or [IGNORE_INDEX] * len(tokens)
    for token, label in zip(tokens, labels):
        if token != IMG:
            rows.append(inner.embed_tokens.weight[token][None])
            natural.append(len(natural))
            release.append(len(release))
            out_labels.append(label)
            continue
        pixels = next(images)
        patches = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # [C, g*g, d]
        features = F.gelu(patches @ proj[0].weight.T + proj[0].bias) @ proj[2].weight.T + proj[2].bias
        p0, g2 = len(natural), features.shape[1]
        for c in range(features.shape[0]):
            rows += [features[c], inner.image_newline[None]]
            natural += list(range(p0 + c * (g2 + 1), p0 + (c + 1) * (g2 + 1)))
            release += list(range(p0 + c * (g2 + 1), p0 + c * (g2 + 1) + g2))
            release.append(p0 + g2 if c == 0 else p0 + (g2 + 1) * (c - 1) + g2)
            out_labels += [IGNORE_INDEX] * (g2 + 1)
    return torch.cat(rows), torch.tensor(natural), torch.tensor(release), torch.tensor(out_labels)


def plain_llama(model) -> LlamaForCausalLM:
    """transformers' LlamaForCausalLM holding the LLaVA model's decoder weights (multimodal keys left out)."""
    reference = LlamaForCausalLM._from_config(plain_llama_config(model.config), attn_implementation="eager")
    state = model.state_dict()
    result = reference.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert set(result.unexpected_keys) == multimodal_keys(state)
    return reference.float().eval()


@torch.no_grad()
def manual_llama_logits(model, embeds, positions, visible):
    """Llama decoder by hand. embeds [T, D], positions [T], visible [T, T] bool (query, key) -> [T, V]."""
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // heads
    theta = cfg.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None]  # [T, hd/2]
    cos, sin = angles.cos(), angles.sin()
    length = embeds.shape[0]

    def rope(x):  # [h, T, hd]
        x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    h = embeds
    for layer in model.model.layers:
        att, mlp = layer.self_attn, layer.mlp
        x = rms(h, layer.input_layernorm.weight)
        q = (x @ att.q_proj.weight.T).view(length, heads, head_dim).transpose(0, 1)
        k = (x @ att.k_proj.weight.T).view(length, kv_heads, head_dim).transpose(0, 1)
        v = (x @ att.v_proj.weight.T).view(length, kv_heads, head_dim).transpose(0, 1)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(heads // kv_heads, dim=0)
        v = v.repeat_interleave(heads // kv_heads, dim=0)
        scores = (q @ k.transpose(1, 2)) / head_dim**0.5
        scores = scores.masked_fill(~visible[None], float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(length, heads * head_dim)
        h = h + out @ att.o_proj.weight.T
        x = rms(h, layer.post_attention_layernorm.weight)
        h = h + (F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return rms(h, model.model.norm.weight) @ model.lm_head.weight.T


def hand_loss(logits_per_sample, labels_per_sample):
    """Mean next-token cross-entropy over every non-ignored label of every sample."""
    total, count = 0.0, 0
    for logits, labels in zip(logits_per_sample, labels_per_sample):
        for t in range(len(labels) - 1):
            target = int(labels[t + 1])
            if target != IGNORE_INDEX:
                total += -float(torch.log_softmax(logits[t].double(), dim=-1)[target])
                count += 1
    return total / count


def with_weights_of(model, **config_overrides):
    """A fresh model with the same weights as `model` and a changed config (scheme, attention)."""
    attn = config_overrides.pop("attn_implementation", model.config._attn_implementation)
    image_size = model.get_vision_tower().config.image_size
    other = tiny_llava_model(seed=123, attn_implementation=attn, image_size=image_size, **config_overrides)
    other.load_state_dict(model.state_dict())
    return other


@pytest.fixture(scope="module")
def model():
    return tiny_llava_model(seed=0)


@pytest.fixture(scope="module")
def small_model():
    return tiny_llava_model(seed=1, image_size=SMALL)


# --- forward against references -------------------------------------------------------------------


def test_forward_natural_matches_plain_llama_and_loss(model):
    ids, mask, labels = padded_batch(SAMPLES, side="left")  # forward re-pads on the right
    images, per_sample = sample_images(SAMPLES)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, images=images, labels=labels)
    reference = plain_llama(model)
    ref_logits, ref_labels = [], []
    for b, sample in enumerate(SAMPLES):
        embeds, natural, _, lab = reference_inputs(model, sample["tokens"], sample["labels"], per_sample[b])
        with torch.no_grad():
            logits = reference(inputs_embeds=embeds[None]).logits[0]
        n = embeds.shape[0]
        torch.testing.assert_close(out.logits[b, :n], logits, rtol=0, atol=2e-5)
        ref_logits.append(logits)
        ref_labels.append(lab)
    assert out.logits.shape[1] == max(x.shape[0] for x in ref_logits)
    assert out.loss.item() == pytest.approx(hand_loss(ref_logits, ref_labels), abs=1e-5)


def test_manual_reference_agrees_with_plain_llama(model):
    """Validates the hand-written decoder used for the release scheme below."""
    embeds, natural, _, _ = reference_inputs(model, [1, 5, IMG, 6], None, random_images([2]))
    causal = torch.ones(len(natural), len(natural), dtype=torch.bool).tril()
    with torch.no_grad():
        expected = plain_llama(model)(inputs_embeds=embeds[None]).logits[0]
    torch.testing.assert_close(
        manual_llama_logits(model, embeds, natural, causal), expected, rtol=0, atol=2e-5
    )


def test_forward_release_matches_position_masked_reference(model):
    release_model = with_weights_of(model, image_newline_positions="release")
    ids, mask, labels = padded_batch(SAMPLES, side="right")
    images, per_sample = sample_images(SAMPLES)
    with torch.no_grad():
        out = release_model(input_ids=ids, attention_mask=mask, images=images, labels=labels)
        natural_out = model(input_ids=ids, attention_mask=mask, images=images, labels=labels)
    ref_logits, ref_labels = [], []
    for b, sample in enumerate(SAMPLES):
        embeds, _, release, lab = reference_inputs(model, sample["tokens"], sample["labels"], per_sample[b])
        visible = release[None, :] <= release[:, None]  # key k visible from query q iff pos_k <= pos_q
        logits = manual_llama_logits(model, embeds, release, visible)
        n = embeds.shape[0]
        torch.testing.assert_close(out.logits[b, :n], logits, rtol=0, atol=2e-5)
        ref_logits.append(logits)
        ref_labels.append(lab)
    assert out.loss.item() == pytest.approx(hand_loss(ref_logits, ref_labels), abs=1e-5)
    # Not vacuous: multi-crop samples differ between the schemes, the text-only one does not.
    assert not torch.allclose(out.logits[0], natural_out.logits[0], atol=1e-3)
    torch.testing.assert_close(out.logits[2, :7], natural_out.logits[2, :7], rtol=0, atol=1e-5)


@pytest.mark.parametrize("scheme", ["natural", "release"])
def test_eager_equals_sdpa(small_model, model, scheme):
    for base, samples in (
        (small_model, SAMPLES),
        (model, [{"tokens": [1, 5, IMG, 6, 7], "crops": [2]}, {"tokens": [1, IMG, 8], "crops": [1]}]),
    ):
        image_size = base.get_vision_tower().config.image_size
        ids, mask, _ = padded_batch(samples, side="right")
        images, _ = sample_images(samples, seed=3, image_size=image_size)
        logits = {}
        for attn in ("eager", "sdpa"):
            variant = with_weights_of(base, attn_implementation=attn, image_newline_positions=scheme)
            assert variant.config._attn_implementation == attn
            with torch.no_grad():
                out = variant(input_ids=ids, attention_mask=mask, images=images)
            logits[attn] = out.logits
        with torch.no_grad():
            _, _, layout = variant.prepare_inputs_labels_for_multimodal(ids, mask, None, images)
        real = layout.attention_mask.bool()
        torch.testing.assert_close(logits["eager"][real], logits["sdpa"][real], rtol=0, atol=2e-5)


def test_images_as_5d_tensor_equal_list(small_model):
    ids = torch.tensor([[1, 5, IMG, 6], [1, IMG, 7, 8]])
    images = random_images([3, 3], seed=4, image_size=SMALL)
    with torch.no_grad():
        from_list = small_model(input_ids=ids, images=images).logits
        from_tensor = small_model(input_ids=ids, images=torch.stack(images)).logits
    torch.testing.assert_close(from_tensor, from_list, rtol=0, atol=0)


def test_forward_placeholder_image_mismatch_raises(small_model):
    ids = torch.tensor([[1, IMG, 5, IMG]])
    with pytest.raises(ValueError, match="placeholder"):
        small_model(input_ids=ids, images=random_images([1], image_size=SMALL))


# --- generation -----------------------------------------------------------------------------------


@torch.no_grad()
def greedy_reference(model, tokens, images, max_new_tokens, stop_at_eos=True):
    """Greedy decoding by recomputing the full forward on prompt + generated tokens every step."""
    generated = []
    for _ in range(max_new_tokens):
        ids = torch.tensor([tokens + generated])
        logits = model(input_ids=ids, images=images or None).logits[0, -1]
        generated.append(int(logits.argmax()))
        if stop_at_eos and generated[-1] == EOS_ID:
            break
    return generated


def assert_rows_match(output, expected_rows):
    """Each output row starts with its expected tokens; a row that stopped at EOS is padded after."""
    assert output.shape == (len(expected_rows), max(len(r) for r in expected_rows))
    for row, expected in zip(output.tolist(), expected_rows):
        assert row[: len(expected)] == expected
        assert all(t == PAD_ID for t in row[len(expected) :])


GEN_SAMPLES = [
    {"tokens": [1, 5, 6, IMG, 7, 8], "crops": [3]},
    {"tokens": [1, IMG, 9], "crops": [2]},
    {"tokens": [1, 10, 11, 12, 13, 14, 15, 16, 17], "crops": []},
    {"tokens": [1, 18, IMG, 19, IMG, 20], "crops": [1, 4]},
    {"tokens": [1, 18, IMG, 19, IMG], "crops": [1, 4]},  # stops at EOS at once: padded after
]
NEW = 6


def generate(model, samples, image_size=SMALL, use_cache=True, seed=5):
    ids, mask, _ = padded_batch(samples, side="left", extra=0)
    images, _ = sample_images(samples, seed=seed, image_size=image_size)
    return model.generate(
        ids,
        images=images or None,
        image_sizes=[(image_size, image_size)] * len(images) if images else None,
        attention_mask=mask,
        max_new_tokens=NEW,
        do_sample=False,
        pad_token_id=PAD_ID,
        use_cache=use_cache,
    )


@pytest.fixture(scope="module", params=["natural", "release"])
def gen_model(request, small_model):
    return with_weights_of(small_model, image_newline_positions=request.param)


def test_generate_single_sample_matches_recompute_loop(gen_model):
    sample = GEN_SAMPLES[0]
    _, per_sample = sample_images([sample], seed=5, image_size=SMALL)
    expected = greedy_reference(gen_model, sample["tokens"], per_sample[0], NEW)
    assert_rows_match(generate(gen_model, [sample]), [expected])


def test_generate_batched_matches_recompute_and_one_by_one(gen_model):
    _, per_sample = sample_images(GEN_SAMPLES, seed=5, image_size=SMALL)
    expected = [
        greedy_reference(gen_model, s["tokens"], per_sample[b], NEW) for b, s in enumerate(GEN_SAMPLES)
    ]
    batched = generate(gen_model, GEN_SAMPLES)
    assert_rows_match(batched, expected)
    for b, sample in enumerate(GEN_SAMPLES):
        ids = torch.tensor([sample["tokens"]])
        single = gen_model.generate(
            ids,
            images=per_sample[b] or None,
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=PAD_ID,
        )
        assert_rows_match(single, [expected[b]])


def test_generate_without_cache_equals_cached(gen_model):
    cached = generate(gen_model, GEN_SAMPLES, use_cache=True)
    uncached = generate(gen_model, GEN_SAMPLES, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    "scheme",
    [
        "natural",
        "release",
    ],
)
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_after_a_final_multi_crop_image(small_model, scheme, use_cache):
    """The prompt ends with the image: new text must continue where a full forward puts it."""
    model = with_weights_of(small_model, image_newline_positions=scheme)
    model.generation_config.eos_token_id = None  # this prompt's first new token is EOS; keep going
    tokens = [1, 18, 19, IMG]
    images = random_images([3], seed=1, image_size=SMALL)
    expected = greedy_reference(model, tokens, images, NEW, stop_at_eos=False)
    output = model.generate(
        torch.tensor([tokens]),
        images=images,
        max_new_tokens=NEW,
        do_sample=False,
        pad_token_id=PAD_ID,
        use_cache=use_cache,
    )
    assert output.tolist() == [expected]


@pytest.mark.parametrize("scheme", ["natural", "release"])
def test_generate_batched_beam_search_equals_one_by_one(small_model, scheme):
    model = with_weights_of(small_model, image_newline_positions=scheme)
    samples = GEN_SAMPLES[:2]
    ids, mask, _ = padded_batch(samples, side="left", extra=0)
    images, per_sample = sample_images(samples, seed=5, image_size=SMALL)
    kwargs = {
        "max_new_tokens": 4,
        "do_sample": False,
        "num_beams": 2,
        "num_return_sequences": 2,
        "pad_token_id": PAD_ID,
    }
    batched = model.generate(ids, images=images, attention_mask=mask, **kwargs)
    for b, sample in enumerate(samples):
        single = model.generate(torch.tensor([sample["tokens"]]), images=per_sample[b], **kwargs)
        rows = batched[2 * b : 2 * b + 2, : single.shape[1]]
        assert torch.equal(rows, single)


def test_generate_text_only_returns_new_tokens(small_model):
    samples = [{"tokens": [1, 5, 6, 7, 8], "crops": []}, {"tokens": [1, 9], "crops": []}]
    expected = [greedy_reference(small_model, s["tokens"], [], NEW) for s in samples]
    single = small_model.generate(
        torch.tensor([samples[0]["tokens"]]), max_new_tokens=NEW, do_sample=False, pad_token_id=PAD_ID
    )
    assert_rows_match(single, expected[:1])
    batched = generate(small_model, samples)
    assert_rows_match(batched, expected)


# --- save / load ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["natural", "release"])
def test_save_and_reload_give_identical_logits(small_model, tmp_path, scheme):
    source = with_weights_of(small_model, image_newline_positions=scheme)
    path = save_tiny_checkpoint(source, tmp_path / "ckpt")
    saved = json.loads((path / "config.json").read_text())
    assert saved["image_newline_positions"] == scheme
    assert saved["mm_vision_tower_config"] == source.config.mm_vision_tower_config

    ids, mask, _ = padded_batch(SAMPLES, side="right")
    images, _ = sample_images(SAMPLES, seed=6, image_size=SMALL)
    with torch.no_grad():
        expected = source(input_ids=ids, attention_mask=mask, images=images).logits

    auto = AutoModelForCausalLM.from_pretrained(path).eval()
    _, built, _, _ = load_pretrained_model(str(path), device="cpu")
    for loaded in (auto, built):
        assert type(loaded) is LlavaLlamaForCausalLM
        assert loaded.config.image_newline_positions == scheme
        assert loaded.config.mm_vision_tower_config == source.config.mm_vision_tower_config
        assert loaded.config.mm_hidden_size == source.config.mm_hidden_size
        with torch.no_grad():
            logits = loaded(input_ids=ids, attention_mask=mask, images=images).logits
        assert torch.equal(logits, expected)


# --- config -----------------------------------------------------------------------------------------


def authors_config_dict(**extra):
    """A config in the authors' release format: the `proxyv` key, no `image_newline_positions`."""
    return {
        "model_type": "llava_llama",
        "vocab_size": 64,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_patch_merge_type": "spatial_unpad",
        "image_aspect_ratio": "anyres",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tokenizer_model_max_length": 4096,
        "tokenizer_padding_side": "right",
        **extra,
    }


@pytest.mark.parametrize("proxyv", [True, False])
def test_authors_config_reads_as_release(tmp_path, proxyv):
    values = authors_config_dict(proxyv=proxyv)
    assert LlavaConfig.from_dict(values).image_newline_positions == "release"
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, LlavaConfig)
    assert config.image_newline_positions == "release"
    # Saving it again writes the scheme explicitly.
    config.save_pretrained(tmp_path / "resaved")
    assert (
        json.loads((tmp_path / "resaved" / "config.json").read_text())["image_newline_positions"] == "release"
    )


def test_config_without_proxyv_key_is_natural_and_explicit_value_wins():
    assert LlavaConfig.from_dict(authors_config_dict()).image_newline_positions == "natural"
    explicit = LlavaConfig.from_dict(authors_config_dict(proxyv=True, image_newline_positions="natural"))
    assert explicit.image_newline_positions == "natural"


@pytest.mark.parametrize(
    ("key", "value", "known"),
    [
        ("image_newline_positions", "shifted", ["natural", "release"]),
        ("image_aspect_ratio", "stretch", ["anyres", "pad"]),
    ],
)
def test_unknown_config_values_raise(key, value, known):
    with pytest.raises(ValueError) as info:
        tiny_llava_config(**{key: value})
    message = str(info.value)
    assert value in message
    assert all(name in message for name in known)


def test_unknown_projector_type_raises():
    with pytest.raises(ValueError) as info:
        tiny_llava_model(mm_projector_type="mlp2x_relu", image_size=SMALL)
    message = str(info.value)
    assert "mlp2x_relu" in message
    assert "linear" in message and "mlp2x_gelu" in message and "identity" in message


def test_mm_hidden_size_filled_from_tower(small_model):
    assert tiny_llava_config().mm_hidden_size is None
    assert small_model.config.mm_hidden_size == 32
    assert small_model.model.mm_projector[0].in_features == 32


def test_tower_config_filled_from_local_tower(tmp_path):
    clip_dir = save_tiny_clip(tmp_path / "clip", image_size=SMALL)
    config = tiny_llava_config(mm_vision_tower=str(clip_dir), mm_vision_tower_config=None)
    model = LlavaLlamaForCausalLM(config)
    assert model.config.mm_hidden_size == 32
    assert model.config.mm_vision_tower_config["image_size"] == SMALL
    expected = tiny_vision_config(image_size=SMALL)
    for key in ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        assert model.config.mm_vision_tower_config[key] == expected[key]
    # The filled-in config rebuilds the same tower without reading the folder again.
    rebuilt = LlavaLlamaForCausalLM(
        tiny_llava_config(
            mm_vision_tower="elsewhere", mm_vision_tower_config=model.config.mm_vision_tower_config
        )
    )
    assert rebuilt.get_vision_tower().num_patches == (SMALL // 14) ** 2


@pytest.mark.parametrize("proxyv", [False, True])
def test_saved_tower_weights_use_the_release_names(tmp_path, proxyv):
    """docs/design.md §5.3: checkpoints name the tower's weights `...vision_tower.vision_model.*`."""
    from safetensors import safe_open

    from tests.proxyv_fixtures import tiny_proxyv_model

    model = tiny_proxyv_model() if proxyv else tiny_llava_model(image_size=56)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        tower_keys = [key for key in handle.keys() if key.startswith("model.vision_tower.")]  # noqa: SIM118
    assert tower_keys and all(k.startswith("model.vision_tower.vision_tower.vision_model.") for k in tower_keys)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, value), (_, again) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(value, again), name
