"""The ProxyV decoder against a plain reference implementation of docs/design.md §4.

The reference (`reference_forward`) is written here from the spec, independent of the package's
plan/layer code: per sample, it embeds the text and the images' crops by hand (crop features from
the model's own vision tower + projector), assigns positions by hand (natural or release newline
scheme, docs/design.md §5.4), runs layers 0..s-1 as ordinary Llama layers with an explicit bool
visibility matrix, then creates the proxies crop by crop and runs every ProxyV layer on the two
streams with loops over crops and tokens. RMSNorm, RoPE, GQA attention and the FFN are written
out with the layers' weights. Other tests compare the model against the baseline with the same
weights (s = L), across attention backends, with and without gradient checkpointing, and greedy
generation with the KV cache against a recomputation loop.
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import LlavaConfig, LlavaProxyVConfig, LlavaProxyVLlamaForCausalLM
from llava.model.model_registry import causal_lm_class_for_config, config_for_class
from tests.paths import GOLDEN
from tests.proxyv_fixtures import (
    MIXED_CROPS,
    MIXED_SAMPLES,
    NUM_LAYERS,
    PAD_ID,
    baseline_twin,
    copy_with_attn,
    expanded_length,
    pad_batch,
    random_crops,
    split_crops_by_sample,
    tiny_proxyv_config,
    tiny_proxyv_model,
)

ATOL = 1e-5
TEXT, FULL, NEWLINE, PROXY = "text", "full", "newline", "proxy"
GOLDEN_CONFIG = GOLDEN / "spatial_s1" / "config.json"


# ----------------------------------------------------------------------------- the reference


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(states, positions, theta):
    """RoPE (rotate-half convention) on [H, S, hd] at integer positions [S]."""
    head_dim = states.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [S, hd/2]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    first, second = states[..., : head_dim // 2], states[..., head_dim // 2 :]
    return states * cos + torch.cat([-second, first], -1) * sin


def project(attn, config, rows, part):
    """The `part` ("q", "k" or "v") projection of rows [S, D] -> [S, width], whatever the family's layout:
    separate q/k/v Linear layers (Llama, Mistral, Qwen2 with biases, Qwen3) or one fused qkv (Phi-3)."""
    if hasattr(attn, "qkv_proj"):
        head_dim = attn.head_dim
        sizes = [config.num_attention_heads * head_dim] + [config.num_key_value_heads * head_dim] * 2
        return dict(zip("qkv", attn.qkv_proj(rows).split(sizes, dim=-1)))[part]
    return getattr(attn, f"{part}_proj")(rows)


def attention(layer, config, query_in, query_pos, key_in, key_pos, visible):
    """The decoder's attention of query rows [Q, D] over key rows [K, D]; visible [Q, K] bool.

    Returns the output [Q, D] and the rotated keys / values [Hkv, K, hd] (what a cache holds).
    """
    attn = layer.self_attn
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = attn.head_dim
    theta = config.rope_parameters["rope_theta"]
    q = project(attn, config, query_in, "q").view(-1, heads, head_dim)  # [Q, H, hd]
    k = project(attn, config, key_in, "k").view(-1, kv_heads, head_dim)  # [K, Hkv, hd]
    v = project(attn, config, key_in, "v").view(-1, kv_heads, head_dim).transpose(0, 1)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before RoPE
        q = rms_norm(q, attn.q_norm.weight, config.rms_norm_eps)
        k = rms_norm(k, attn.k_norm.weight, config.rms_norm_eps)
    q, k = rope(q.transpose(0, 1), query_pos, theta), rope(k.transpose(0, 1), key_pos, theta)
    group = heads // kv_heads
    scores = q @ k.repeat_interleave(group, 0).transpose(1, 2) / math.sqrt(head_dim)  # [H, Q, K]
    scores = scores.masked_fill(~visible[None], float("-inf"))
    out = torch.softmax(scores, -1) @ v.repeat_interleave(group, 0)  # [H, Q, hd]
    return attn.o_proj(out.transpose(0, 1).reshape(query_in.shape[0], -1)), k, v


def ffn(layer, x):
    """The gated SiLU FFN: separate gate/up projections, or Phi-3's fused gate_up_proj."""
    mlp = layer.mlp
    if hasattr(mlp, "gate_up_proj"):
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
    else:
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    return mlp.down_proj(F.silu(gate) * up)


def build_sequence(model, sample, images, scheme):
    """Embeds [T, D], kinds, positions [T] and crops (full-token indices, crop index, p0) by hand."""
    config = model.config
    tokens = config.per_crop_token_len
    embed = model.get_input_embeddings().weight
    newline = model.model.image_newline if images else None
    features = iter([model.encode_images(crops) for crops in images])  # [C, g*g, D] each
    rows, kinds, positions, crops = [], [], [], []
    for token in sample:
        if token != IMAGE_TOKEN_INDEX:
            positions.append(len(rows))
            rows.append(embed[token])
            kinds.append(TEXT)
            continue
        image = next(features)
        p0 = len(rows)
        for c in range(image.shape[0]):
            full_index = []
            for k in range(tokens):
                full_index.append(len(rows))
                positions.append(p0 + (tokens + 1) * c + k)
                rows.append(image[c, k])
                kinds.append(FULL)
            if scheme == "natural" or c == 0:
                positions.append(p0 + (tokens + 1) * c + tokens)
            else:  # release: crop c's newline sits where crop c-1's natural newline would be
                positions.append(p0 + (tokens + 1) * (c - 1) + tokens)
            rows.append(newline)
            kinds.append(NEWLINE)
            crops.append({"full": full_index, "crop": c, "p0": p0})
    return torch.stack(rows), kinds, torch.tensor(positions), crops


def standard_layer(layer, config, hidden, positions):
    """An ordinary decoder layer; causality follows position ids (key position <= query position)."""
    eps = config.rms_norm_eps
    visible = positions[None, :] <= positions[:, None]
    normed = rms_norm(hidden, layer.input_layernorm.weight, eps)
    out, k, v = attention(layer, config, normed, positions, normed, positions, visible)
    hidden = hidden + out
    return hidden + ffn(layer, rms_norm(hidden, layer.post_attention_layernorm.weight, eps)), k, v


def make_proxies(model, full):
    """Proxies [n, D] (and the assignment A [g*g, n] or None) of one crop's full states [g*g, D]."""
    config = model.config
    g = math.isqrt(config.per_crop_token_len)
    h = g // config.proxyv_reduce_factor
    if not config.learn_proxy:
        grid = full.T.reshape(1, -1, g, g)  # [1, D, g, g], raster order
        pooled = F.interpolate(grid, size=(h, h), mode="bilinear", align_corners=False)
        return pooled.reshape(-1, h * h).T, None
    init = model.model.proxyv_initializer
    queries = init.proxyv_tokens  # [n, d_m]
    keys = full @ init.Wk.weight.T  # [g*g, d_m]
    scores = queries @ keys.T / math.sqrt(queries.shape[-1])  # [n, g*g]
    return torch.softmax(scores, -1) @ full, torch.softmax(scores.T, -1)


def guided_update(model, vision_mlp, full, proxies, assignment):
    """V' = RMSNorm_post(W2 SiLU(W1 [V W_in ; G]) + V) for one crop, G built token by token."""
    config = model.config
    g = math.isqrt(config.per_crop_token_len)
    r = config.proxyv_reduce_factor
    h = g // r
    if assignment is None:
        context = proxies @ vision_mlp.context_proj.weight.T  # [n, d_m]
        rows = []
        for k in range(g * g):
            i, j = divmod(k, g)
            rows.append(context[(i // r) * h + (j // r)])
        guidance = torch.stack(rows)
    else:
        guidance = (assignment @ proxies) @ vision_mlp.context_proj.weight.T
    mixed = torch.cat([full @ vision_mlp.input_proj.weight.T, guidance], -1)
    w1, w2 = vision_mlp.proj[0].weight, vision_mlp.proj[2].weight
    return rms_norm(F.silu(mixed @ w1.T) @ w2.T + full, vision_mlp.layernorm_post.weight, config.rms_norm_eps)


def proxyv_layer(model, layer, vision_mlp, hidden, kinds, positions, crops, proxies, assignments):
    """One ProxyV layer on one sample; returns the new natural states, new proxies, cached K/V."""
    config = model.config
    eps = config.rms_norm_eps
    n = proxies[0].shape[0] if proxies else 0
    light = [i for i, kind in enumerate(kinds) if kind != FULL]
    proxy_states = torch.cat(proxies) if proxies else hidden.new_zeros(0, hidden.shape[1])
    proxy_pos = [crop["p0"] + crop["crop"] * n + j for crop in crops for j in range(n)]
    proxy_pos = torch.tensor(proxy_pos, dtype=torch.long)

    light_in = torch.cat([hidden[light], proxy_states])  # queries: text/newlines, then proxies
    query_kinds = [kinds[i] for i in light] + [PROXY] * len(proxy_pos)
    query_pos = torch.cat([positions[light], proxy_pos])
    key_kinds = kinds + [PROXY] * len(proxy_pos)
    key_pos = torch.cat([positions, proxy_pos])
    rows = []
    for q_kind, q_pos in zip(query_kinds, query_pos.tolist()):
        row = []
        for k_kind, k_pos in zip(key_kinds, key_pos.tolist()):
            allowed = k_kind != FULL if q_kind == PROXY else k_kind != PROXY
            row.append(allowed and k_pos <= q_pos)
        rows.append(row)
    visible = torch.tensor(rows, dtype=torch.bool)  # [queries, keys]

    weight = layer.input_layernorm.weight
    keys_in = torch.cat([rms_norm(hidden, weight, eps), rms_norm(proxy_states, weight, eps)])
    out, k, v = attention(
        layer, config, rms_norm(light_in, weight, eps), query_pos, keys_in, key_pos, visible
    )
    light_out = light_in + out
    light_out = light_out + ffn(layer, rms_norm(light_out, layer.post_attention_layernorm.weight, eps))

    new_hidden = hidden.clone()
    new_hidden[light] = light_out[: len(light)]
    new_proxies = list(light_out[len(light) :].split(n)) if proxies else []
    for crop, crop_proxies, assignment in zip(crops, new_proxies, assignments):
        full = hidden[crop["full"]]  # the full stream as it entered this layer
        new_hidden[crop["full"]] = guided_update(model, vision_mlp, full, crop_proxies, assignment)
    natural = hidden.shape[0]
    return new_hidden, new_proxies, k[:, :natural], v[:, :natural]


def reference_forward(model, sample, images, scheme=None):
    """Logits [T, V] and per-layer cached keys/values [Hkv, T, hd] for one unpadded sample."""
    config = model.config
    scheme = scheme or config.image_newline_positions
    hidden, kinds, positions, crops = build_sequence(model, sample, images, scheme)
    start = config.proxyv_start_layer
    cache = []
    for layer in model.model.layers[:start]:
        hidden, k, v = standard_layer(layer, config, hidden, positions)
        cache.append((k, v))
    made = [make_proxies(model, hidden[crop["full"]]) for crop in crops]
    proxies = [p for p, _ in made]
    assignments = [a for _, a in made]
    for index, layer in enumerate(model.model.layers[start:]):
        vision_mlp = model.model.vision_mlp_layers[index]
        hidden, proxies, k, v = proxyv_layer(
            model, layer, vision_mlp, hidden, kinds, positions, crops, proxies, assignments
        )
        cache.append((k, v))
    logits = model.lm_head(rms_norm(hidden, model.model.norm.weight, config.rms_norm_eps))
    return logits, cache


# ----------------------------------------------------------------------------- helpers


def mixed_batch():
    ids, mask = pad_batch(MIXED_SAMPLES, "right")
    crops = random_crops(MIXED_CROPS, seed=3)
    return ids, mask, crops


def assert_batch_matches_reference(model, ids, mask, crops, samples):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, images=crops, use_cache=False).logits
    for b, (sample, images) in enumerate(zip(samples, split_crops_by_sample(samples, crops))):
        with torch.no_grad():
            expected, _ = reference_forward(model, sample, images)
        length = expected.shape[0]
        torch.testing.assert_close(logits[b, :length], expected, atol=ATOL, rtol=1e-5)


def enable_checkpointing(model):
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable()


# ----------------------------------------------------------------------------- reference equivalence


@pytest.mark.parametrize("scheme", ["natural", "release"])
@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
@pytest.mark.parametrize("start", [0, 1, 2, 3])
def test_matches_reference_on_mixed_batch(start, learn_proxy, scheme):
    model = tiny_proxyv_model(
        seed=start, proxyv_start_layer=start, learn_proxy=learn_proxy, image_newline_positions=scheme
    )
    ids, mask, crops = mixed_batch()
    assert_batch_matches_reference(model, ids, mask, crops, MIXED_SAMPLES)


def test_reference_without_proxyv_layers_is_the_baseline():
    """Sanity check of the reference itself: with s = L it must be the baseline model."""
    model = tiny_proxyv_model(seed=7, proxyv_start_layer=NUM_LAYERS, image_newline_positions="release")
    baseline = baseline_twin(model)
    ids, mask, crops = mixed_batch()
    with torch.no_grad():
        logits = baseline(input_ids=ids, attention_mask=mask, images=crops, use_cache=False).logits
    for b, (sample, images) in enumerate(zip(MIXED_SAMPLES, split_crops_by_sample(MIXED_SAMPLES, crops))):
        with torch.no_grad():
            expected, _ = reference_forward(model, sample, images)
        torch.testing.assert_close(logits[b, : expected.shape[0]], expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("scheme", ["natural", "release"])
@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
def test_start_layer_equal_to_depth_is_the_baseline(learn_proxy, scheme):
    model = tiny_proxyv_model(
        seed=11, proxyv_start_layer=NUM_LAYERS, learn_proxy=learn_proxy, image_newline_positions=scheme
    )
    assert len(model.model.vision_mlp_layers) == 0
    baseline = baseline_twin(model)
    ids, mask, crops = mixed_batch()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, images=crops, labels=labels, use_cache=False)
        theirs = baseline(input_ids=ids, attention_mask=mask, images=crops, labels=labels, use_cache=False)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-6, rtol=1e-6)


def test_text_only_batch_is_the_baseline():
    """Without images there is nothing for ProxyV to do: the plain decoder runs."""
    model = tiny_proxyv_model(seed=12, proxyv_start_layer=1)
    baseline = baseline_twin(model)
    ids, mask = pad_batch([[1, 5, 6, 7, 8], [1, 9, 10]], "right")
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        theirs = baseline(input_ids=ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- attention backends


@pytest.mark.parametrize("scheme", ["natural", "release"])
@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
def test_eager_and_sdpa_agree(learn_proxy, scheme, monkeypatch):
    eager = tiny_proxyv_model(
        seed=21,
        proxyv_start_layer=1,
        learn_proxy=learn_proxy,
        image_newline_positions=scheme,
        attn_implementation="eager",
    )
    sdpa = copy_with_attn(eager, "sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    ids, mask, crops = mixed_batch()
    with torch.no_grad():
        eager_logits = eager(input_ids=ids, attention_mask=mask, images=crops, use_cache=False).logits
        sdpa_logits = sdpa(input_ids=ids, attention_mask=mask, images=crops, use_cache=False).logits
    torch.testing.assert_close(sdpa_logits, eager_logits, atol=ATOL, rtol=1e-5)

    # The SDPA kernel really runs in every decoder layer (no silent fallback to eager), and eager
    # never calls it. The decoder runs alone here, from the prepared multimodal inputs.
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    with torch.no_grad():
        embeds, _, layout = eager.prepare_inputs_labels_for_multimodal(ids, mask, None, crops)
    decoder_inputs = {
        "inputs_embeds": embeds,
        "attention_mask": layout.attention_mask,
        "position_ids": layout.position_ids,
        "multimodal_layout": layout,
        "use_cache": False,
    }
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    counts = {}
    with torch.no_grad():
        for name, model in (("eager", eager), ("sdpa", sdpa)):
            calls.clear()
            logits = model(**decoder_inputs).logits
            counts[name] = len(calls)
            torch.testing.assert_close(logits, eager_logits, atol=ATOL, rtol=1e-5)
    assert counts == {"eager": 0, "sdpa": NUM_LAYERS}


# ----------------------------------------------------------------------------- gradient checkpointing


def _loss_and_grads(model, checkpointing):
    model.train()
    if checkpointing:
        enable_checkpointing(model)
    ids, mask, crops = mixed_batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=mask, images=crops, labels=labels, use_cache=False).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
def test_gradient_checkpointing_gives_same_loss_and_grads(learn_proxy):
    kwargs = dict(seed=31, proxyv_start_layer=1, learn_proxy=learn_proxy, image_newline_positions="release")
    plain = tiny_proxyv_model(**kwargs)
    checkpointed = tiny_proxyv_model(**kwargs)
    assert plain.config.attention_dropout == 0.0
    loss_plain, grads_plain = _loss_and_grads(plain, checkpointing=False)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.modules())
    torch.testing.assert_close(loss_ckpt, loss_plain, atol=1e-6, rtol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # Every ProxyV parameter takes part: the guided updates and, for learned proxies, the
    # initializer. The last layer's update only feeds vision rows, which carry no label.
    last = f"model.vision_mlp_layers.{NUM_LAYERS - 2}."
    for name, grad in grads_plain.items():
        if name.startswith(last):
            assert grad.abs().sum() == 0, name
        elif "vision_mlp_layers" in name or "proxyv_initializer" in name or "mm_projector" in name:
            assert grad.abs().sum() > 0, name
    if learn_proxy:
        assert "model.proxyv_initializer.Wk.weight" in grads_plain
        assert "model.proxyv_initializer.proxyv_tokens" in grads_plain


@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
def test_gradients_match_reference(learn_proxy):
    """Backward through the model equals backward through the reference, parameter by parameter
    (for learned proxies this includes the assignment A's path into Wk and the proxy queries)."""
    model = tiny_proxyv_model(
        seed=33, proxyv_start_layer=1, learn_proxy=learn_proxy, image_newline_positions="release"
    ).train()
    sample, images = MIXED_SAMPLES[0], random_crops([3], seed=4)
    ids = torch.tensor([sample])
    length = expanded_length(sample, [3])
    weights = torch.randn(length, model.config.vocab_size, generator=torch.Generator().manual_seed(0))

    def grads_of(logits):
        model.zero_grad(set_to_none=True)
        (logits * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected = grads_of(reference_forward(model, sample, images)[0])
    got = grads_of(model(input_ids=ids, images=images, use_cache=False).logits[0])
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-4, rtol=1e-4, msg=name)
    if learn_proxy:
        assert expected["model.proxyv_initializer.Wk.weight"].abs().sum() > 0


def test_learned_assignment_carries_gradient():
    """A's own path: with P's path detached, Wk and the proxy queries still get gradients via A."""
    model = tiny_proxyv_model(seed=32, proxyv_start_layer=1, learn_proxy=True)
    init = model.model.proxyv_initializer
    full = torch.randn(2, 16, model.config.hidden_size)
    proxies, assignment = init(full)
    assert assignment.shape == (2, 16, 4)
    torch.testing.assert_close(assignment.sum(-1), torch.ones(2, 16))
    (assignment * torch.randn_like(assignment)).sum().backward()
    assert init.Wk.weight.grad.abs().sum() > 0
    assert init.proxyv_tokens.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- generation and the KV cache

GEN_SAMPLES = [
    [1, 5, 6, IMAGE_TOKEN_INDEX, 7, 8],
    [1, IMAGE_TOKEN_INDEX, 9, 10, IMAGE_TOKEN_INDEX, 11, 12, 13, 14],
    [1, 15, 16, 17],
]
GEN_CROPS = [3, 1, 2]
NEW_TOKENS = 6


def greedy_by_recomputation(model, sample, images):
    """Full forward each step on prompt + generated ids (no cache); argmax of the last logits."""
    ids = torch.tensor([sample])
    generated = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            current = torch.cat([ids, torch.tensor([generated], dtype=torch.long)], 1)
            kwargs = {"images": images} if images else {}
            logits = model(
                input_ids=current, attention_mask=torch.ones_like(current), use_cache=False, **kwargs
            ).logits
            generated.append(int(logits[0, -1].argmax()))
    return generated


def generate(model, ids, mask, images, use_cache):
    kwargs = {"images": images} if images else {}
    return model.generate(
        ids,
        image_sizes=None,
        attention_mask=mask,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=PAD_ID,
        use_cache=use_cache,
        **kwargs,
    )


@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
@pytest.mark.parametrize("scheme", ["natural", "release"])
def test_greedy_generation_single_sample(scheme, learn_proxy):
    model = tiny_proxyv_model(
        seed=41, proxyv_start_layer=1, learn_proxy=learn_proxy, image_newline_positions=scheme
    )
    sample, images = GEN_SAMPLES[0], random_crops([3], seed=5)
    expected = greedy_by_recomputation(model, sample, images)
    ids = torch.tensor([sample])
    cached = generate(model, ids, torch.ones_like(ids), images, use_cache=True)
    uncached = generate(model, ids, torch.ones_like(ids), images, use_cache=False)
    assert cached.tolist() == [expected]
    assert uncached.tolist() == [expected]


@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
def test_greedy_generation_batched_left_padded(learn_proxy):
    model = tiny_proxyv_model(
        seed=42, proxyv_start_layer=2, learn_proxy=learn_proxy, image_newline_positions="release"
    )
    crops = random_crops(GEN_CROPS, seed=6)
    per_sample = split_crops_by_sample(GEN_SAMPLES, crops)
    expected = [greedy_by_recomputation(model, s, imgs) for s, imgs in zip(GEN_SAMPLES, per_sample)]
    one_by_one = []
    for sample, images in zip(GEN_SAMPLES, per_sample):
        ids = torch.tensor([sample])
        one_by_one.append(generate(model, ids, torch.ones_like(ids), images, use_cache=True)[0].tolist())
    ids, mask = pad_batch(GEN_SAMPLES, "left")
    cached = generate(model, ids, mask, crops, use_cache=True)
    uncached = generate(model, ids, mask, crops, use_cache=False)
    assert one_by_one == expected
    assert cached.tolist() == expected
    assert uncached.tolist() == expected


@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
def test_prefill_cache_holds_natural_tokens_only(learn_proxy):
    """After a prefill each layer caches exactly T keys/values (no proxies), equal to the reference's."""
    model = tiny_proxyv_model(
        seed=43, proxyv_start_layer=1, learn_proxy=learn_proxy, image_newline_positions="release"
    )
    sample, images = GEN_SAMPLES[1], random_crops([1, 2], seed=7)
    ids = torch.tensor([sample])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), images=images, use_cache=True)
    length = expanded_length(sample, [1, 2])
    assert out.logits.shape[1] == length
    layers = out.past_key_values.layers
    assert len(layers) == NUM_LAYERS
    with torch.no_grad():
        _, reference_cache = reference_forward(model, sample, images)
    for index, (layer, (keys, values)) in enumerate(zip(layers, reference_cache)):
        assert layer.keys.shape[-2] == length, index
        assert layer.values.shape[-2] == length, index
        torch.testing.assert_close(layer.keys[0], keys, atol=ATOL, rtol=1e-5, msg=f"keys of layer {index}")
        torch.testing.assert_close(
            layer.values[0], values, atol=ATOL, rtol=1e-5, msg=f"values of layer {index}"
        )


def test_prefill_cache_length_in_a_batch():
    model = tiny_proxyv_model(seed=44, proxyv_start_layer=2)
    crops = random_crops(GEN_CROPS, seed=8)
    ids, mask = pad_batch(GEN_SAMPLES, "left")
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, images=crops, use_cache=True)
    length = max(expanded_length(s, c) for s, c in zip(GEN_SAMPLES, [[3], [1, 2], []]))
    assert out.logits.shape[1] == length
    for layer in out.past_key_values.layers:
        assert layer.keys.shape[-2] == length
        assert layer.values.shape[-2] == length


# ----------------------------------------------------------------------------- parameter budget


def _vicuna7b_proxyv(learn_proxy):
    config = LlavaProxyVConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32000,
        proxyv_start_layer=16,
        learn_proxy=learn_proxy,
        mm_vision_tower=None,
    )
    with torch.device("meta"):
        return LlavaProxyVLlamaForCausalLM(config)


def test_guided_update_parameter_count_for_vicuna_7b():
    model = _vicuna7b_proxyv(learn_proxy=True)
    assert model.config.hidden_size_reduce_factor == 4
    mlps = model.model.vision_mlp_layers
    assert len(mlps) == 32 - 16
    expected = 4096 * 1024 * 2 + 2048 * 1024 + 1024 * 4096 + 4096
    assert expected == 14_684_160
    for mlp in mlps:
        assert sum(p.numel() for p in mlp.parameters()) == expected
    init = model.model.proxyv_initializer
    assert tuple(init.Wk.weight.shape) == (1024, 4096)
    assert tuple(init.proxyv_tokens.shape) == (36, 1024)
    assert model.model.get_vision_tower() is None


def test_spatial_model_has_no_initializer():
    model = tiny_proxyv_model(proxyv_start_layer=1)
    assert not hasattr(model.model, "proxyv_initializer")
    assert len(model.model.vision_mlp_layers) == NUM_LAYERS - 1
    # d < 1024: d_m = d // 2
    assert tuple(model.model.vision_mlp_layers[0].input_proj.weight.shape) == (32, 64)


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("start", [-1, NUM_LAYERS + 1])
def test_start_layer_out_of_range(start):
    with pytest.raises(ValueError, match=r"proxyv_start_layer.*\[0, 4\]"):
        tiny_proxyv_config(proxyv_start_layer=start)


def test_per_crop_token_len_must_be_square():
    with pytest.raises(ValueError, match="per_crop_token_len.*square"):
        tiny_proxyv_config(per_crop_token_len=15)


def test_reduce_factor_must_divide_grid():
    with pytest.raises(ValueError, match="proxyv_reduce_factor 3.*divide.*4"):
        tiny_proxyv_config(proxyv_reduce_factor=3)


def test_config_in_code_defaults_to_natural_and_round_trips(tmp_path):
    config = tiny_proxyv_config()
    assert config.image_newline_positions == "natural"
    assert config.proxyv is True
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded) is LlavaProxyVConfig
    assert reloaded.image_newline_positions == "natural"
    assert reloaded.proxyv_start_layer == 2 and reloaded.proxyv_reduce_factor == 2


def test_authors_config_reads_release(tmp_path):
    (tmp_path / "config.json").write_text(Path(GOLDEN_CONFIG).read_text())
    authors = AutoConfig.from_pretrained(tmp_path)
    assert authors.model_type == "llava_llama"
    assert isinstance(authors, LlavaConfig)
    assert authors.image_newline_positions == "release"
    converted = config_for_class(authors, causal_lm_class_for_config(authors))
    assert isinstance(converted, LlavaProxyVConfig)
    assert converted.image_newline_positions == "release"
    assert converted.proxyv_start_layer == 1
    assert converted.per_crop_token_len == 576 and converted.num_proxies_per_crop == 36
