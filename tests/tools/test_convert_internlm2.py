"""`llava.tools.convert_internlm2`: a tiny random InternLM2 checkpoint, converted and loaded as Llama,
gives the logits of an InternLM2 forward written here from the layout description; bad input
is one `error:` line and the right exit status."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from llava.errors import run_main
from llava.tools.convert_internlm2 import CheckpointError, Sizes, main, split_wqkv

# 4 query heads over 2 key/value heads: group size 2, so the per-group packing of wqkv matters.
TINY = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}


def internlm2_config(**changes) -> dict:
    config = {"architectures": ["InternLM2ForCausalLM"], "auto_map": {"AutoConfig": "configuration_internlm2.X"},
              "model_type": "internlm2", **TINY, "hidden_act": "silu", "max_position_embeddings": 32,
              "rms_norm_eps": 1e-5, "rope_theta": 10000, "rope_scaling": None, "bias": False,
              "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
              "attn_implementation": "eager", "torch_dtype": "float32", "initializer_range": 0.02,
              "use_cache": True, "pretraining_tp": 1, "transformers_version": "4.41.0"}
    return {**config, **changes}


def internlm2_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in InternLM2's names and shapes (norm weights near 1, biases when config has them)."""
    g = torch.Generator().manual_seed(seed)
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    d = hidden // config["num_attention_heads"]
    qkv_rows = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * d

    def rand(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)

    weights = {"model.tok_embeddings.weight": rand(vocab, hidden, scale=1.0),
               "model.norm.weight": 1 + rand(hidden, scale=0.1)}
    if not config["tie_word_embeddings"]:
        weights["output.weight"] = rand(vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({p + "attention.wqkv.weight": rand(qkv_rows, hidden),
                        p + "attention.wo.weight": rand(hidden, hidden),
                        p + "feed_forward.w1.weight": rand(inter, hidden),
                        p + "feed_forward.w3.weight": rand(inter, hidden),
                        p + "feed_forward.w2.weight": rand(hidden, inter),
                        p + "attention_norm.weight": 1 + rand(hidden, scale=0.1),
                        p + "ffn_norm.weight": 1 + rand(hidden, scale=0.1)})
        if config["bias"]:
            weights[p + "attention.wqkv.bias"] = rand(qkv_rows, scale=0.1)
            weights[p + "attention.wo.bias"] = rand(hidden, scale=0.1)
    return weights


def write_checkpoint(folder, config: dict, weights: dict[str, torch.Tensor], fmt: str = "safetensors"):
    """config.json, weights as one safetensors file, two indexed safetensors shards, or one .bin, and
    stand-in tokenizer files."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(weights, str(folder / "model.safetensors"))
    elif fmt == "sharded":
        names = sorted(weights)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for file, shard_names in shards.items():
            save_file({name: weights[name] for name in shard_names}, str(folder / file))
        weight_map = {name: file for file, shard_names in shards.items() for name in shard_names}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        torch.save(weights, folder / "pytorch_model.bin")
    (folder / "tokenizer.model").write_bytes(b"stand-in sentencepiece model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "InternLM2Tokenizer"}))
    (folder / "special_tokens_map.json").write_text("{}")
    (folder / "tokenization_internlm2.py").write_text("# stand-in for InternLM2's tokenizer code\n")
    return folder


# ----------------------------------------------------------------------------- plain InternLM2 forward


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rope_cos_sin(config: dict, seq_len: int, d: int):
    """InternLM2's rotary tables: plain, linear (positions / factor) or dynamic NTK (base grows past
    max_position_embeddings)."""
    base, scaling = float(config["rope_theta"]), config["rope_scaling"] or {}
    positions = torch.arange(seq_len, dtype=torch.float32)
    max_len = config["max_position_embeddings"]
    if scaling.get("type") == "dynamic" and seq_len > max_len:
        factor = scaling["factor"]
        base = base * ((factor * seq_len / max_len) - (factor - 1)) ** (d / (d - 2))
    if scaling.get("type") == "linear":
        positions = positions / scaling["factor"]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = positions[:, None] * inv_freq[None, :]  # [t, d/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [t, d]
    return angles.cos(), angles.sin()


def attention(x, w: dict, p: str, config: dict, cos, sin):
    b, t, _ = x.shape
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    group, d = heads // kv_heads, config["hidden_size"] // heads
    qkv = x @ w[p + "attention.wqkv.weight"].T  # [b, t, (heads + 2 kv_heads) d]
    if config["bias"]:
        qkv = qkv + w[p + "attention.wqkv.bias"]
    qkv = qkv.view(b, t, kv_heads, group + 2, d)  # per KV group: `group` query heads, a key head, a value head
    q = qkv[:, :, :, :group].reshape(b, t, heads, d).transpose(1, 2)  # [b, heads, t, d]; head = kv * group + i
    k = qkv[:, :, :, group].transpose(1, 2)  # [b, kv_heads, t, d]
    v = qkv[:, :, :, group + 1].transpose(1, 2)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # query head h -> kv head h // group
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # [b, heads, t, t]
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, heads * d)
    out = out @ w[p + "attention.wo.weight"].T
    return out + w[p + "attention.wo.bias"] if config["bias"] else out


def internlm2_forward(weights: dict, config: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [b, t, vocab] of an InternLM2 model, straight from its weight layout."""
    eps, d = config["rms_norm_eps"], config["hidden_size"] // config["num_attention_heads"]
    cos, sin = rope_cos_sin(config, input_ids.shape[1], d)
    x = weights["model.tok_embeddings.weight"][input_ids]  # [b, t, hidden]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = x + attention(rms_norm(x, weights[p + "attention_norm.weight"], eps), weights, p, config, cos, sin)
        h = rms_norm(x, weights[p + "ffn_norm.weight"], eps)
        gate, up = h @ weights[p + "feed_forward.w1.weight"].T, h @ weights[p + "feed_forward.w3.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ weights[p + "feed_forward.w2.weight"].T
    x = rms_norm(x, weights["model.norm.weight"], eps)
    head = weights["model.tok_embeddings.weight" if config["tie_word_embeddings"] else "output.weight"]
    return x @ head.T


# ----------------------------------------------------------------------------- tests


def convert(src, dst, *extra) -> int:
    return run_main(main, ["--src", str(src), "--dst", str(dst), *extra])


CASES = {
    "plain": ({}, "safetensors", [10]),
    # max_position_embeddings 8 and 12 tokens: the NTK base grows; then 6 tokens: back to the plain base
    "dynamic_rope_sharded": ({"rope_theta": 1e6, "rope_scaling": {"type": "dynamic", "factor": 2.0},
                              "max_position_embeddings": 8}, "sharded", [12, 6]),
    "bias_tied_linear_bin": ({"bias": True, "tie_word_embeddings": True,
                              "rope_scaling": {"type": "linear", "factor": 2.0}}, "bin", [9]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_llama_matches_internlm2_forward(case, tmp_path):
    from transformers import LlamaForCausalLM

    changes, fmt, lengths = CASES[case]
    config = internlm2_config(**changes)
    weights = internlm2_weights(config)
    src = write_checkpoint(tmp_path / "src", config, weights, fmt)
    assert convert(src, tmp_path / "dst") == 0

    written = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert written["model_type"] == "llama" and written["num_key_value_heads"] == 2
    assert written["rope_parameters"]["rope_theta"] == float(config["rope_theta"])
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenization_internlm2.py"):
        assert (tmp_path / "dst" / name).read_bytes() == (src / name).read_bytes()

    model = LlamaForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.float32, attn_implementation="eager")
    model.eval()
    generator = torch.Generator().manual_seed(1)
    for length in lengths:
        input_ids = torch.randint(0, config["vocab_size"], (2, length), generator=generator)
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits
        torch.testing.assert_close(logits, internlm2_forward(weights, config, input_ids), atol=1e-5, rtol=1e-5)


def test_dynamic_rope_maps_to_rope_parameters(tmp_path):
    config = internlm2_config(rope_theta=1000000, rope_scaling={"type": "dynamic", "factor": 2.0})
    src = write_checkpoint(tmp_path / "src", config, internlm2_weights(config))
    assert convert(src, tmp_path / "dst", "--dtype", "bfloat16") == 0
    written = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert written["rope_parameters"] == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    assert written["dtype"] == "bfloat16" and written["attention_bias"] is False


def test_split_wqkv_takes_heads_group_by_group():
    """Rows labelled (kv group, slot in group): queries group-major, then each group's key, then value."""
    sizes = Sizes(vocab=1, hidden=8, intermediate=1, layers=1, heads=4, kv_heads=2)  # head_dim 2, group 2
    labels = torch.tensor([10 * group + slot for group in range(2) for slot in range(4) for _ in range(2)])
    q, k, v = split_wqkv(labels, sizes)  # slots per group: query, query, key, value
    assert q.tolist() == [0, 0, 1, 1, 10, 10, 11, 11]
    assert k.tolist() == [2, 2, 12, 12]
    assert v.tolist() == [3, 3, 13, 13]


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def tiny_src(tmp_path):
    config = internlm2_config()
    return write_checkpoint(tmp_path / "src", config, internlm2_weights(config)), config


def only_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_wrong_model_type(tiny_src, tmp_path, capsys):
    src, config = tiny_src
    (src / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
    assert convert(src, tmp_path / "dst") == 1
    line = only_error_line(capsys)
    assert "config.json" in line and "model_type" in line and "'qwen2'" in line and "internlm2" in line


def test_missing_weight(tmp_path, capsys):
    config = internlm2_config()
    weights = internlm2_weights(config)
    del weights["model.layers.1.feed_forward.w3.weight"]
    src = write_checkpoint(tmp_path / "src", config, weights)
    assert convert(src, tmp_path / "dst") == 1
    assert "model.layers.1.feed_forward.w3.weight is missing" in only_error_line(capsys)
    assert not (tmp_path / "dst").exists()


def test_wrong_shape(tmp_path, capsys):
    config = internlm2_config()
    weights = internlm2_weights(config)
    weights["model.layers.0.attention.wqkv.weight"] = weights["model.layers.0.attention.wqkv.weight"][:-16]
    src = write_checkpoint(tmp_path / "src", config, weights)
    assert convert(src, tmp_path / "dst") == 1
    line = only_error_line(capsys)
    assert "model.layers.0.attention.wqkv.weight has shape [112, 64]" in line and "[128, 64]" in line


def test_non_empty_dst_needs_force(tiny_src, tmp_path, capsys):
    src, _ = tiny_src
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    assert convert(src, dst) == 2
    line = only_error_line(capsys)
    assert "--dst" in line and str(dst) in line and "--force" in line
    assert convert(src, dst, "--force") == 0
    assert (dst / "notes.txt").read_text() == "keep me" and (dst / "model.safetensors").is_file()


@pytest.mark.parametrize(("change", "culprit"), [
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_scaling type 'yarn'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0, "beta": 1}}, "rope_scaling.beta"),
    ({"attn_implementation": "mystery"}, "attn_implementation 'mystery'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"sliding_window": 4096}, "--ignore-config-key sliding_window"),
    ({"num_key_value_heads": 3}, "num_key_value_heads 3"),
    ({"rope_theta": "abc"}, "rope_theta must be a positive number"),
    ({"rms_norm_eps": "x"}, "'rms_norm_eps'"),
])
def test_unsupported_config_value_is_named(change, culprit, tiny_src, tmp_path, capsys):
    src, config = tiny_src
    (src / "config.json").write_text(json.dumps({**config, **change}))
    assert convert(src, tmp_path / "dst") == 1
    assert culprit in only_error_line(capsys)


def test_ignore_config_key(tiny_src, tmp_path):
    src, config = tiny_src
    (src / "config.json").write_text(json.dumps({**config, "my_note": "x"}))
    assert convert(src, tmp_path / "dst", "--ignore-config-key", "my_note") == 0


@pytest.mark.parametrize("argv", [["--dst", "somewhere"], ["--src", "/no/such/folder", "--dst", "somewhere"]])
def test_usage_errors(argv, capsys):
    assert run_main(main, argv) == 2
    line = only_error_line(capsys)
    assert "--src" in line


def test_debug_shows_the_exception(tiny_src, tmp_path):
    src, config = tiny_src
    (src / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="already a Llama checkpoint"):
        convert(src, tmp_path / "dst", "--debug")
