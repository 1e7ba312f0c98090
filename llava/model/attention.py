"""The one attention primitive behind every masked decoder computation, and how each decoder family
turns hidden states into query / key / value heads.

ProxyV layers (light-stream queries over natural + proxy keys) and PyramidDrop's ranking query
need attention whose queries and keys are *different* token streams with their own RoPE
positions. `project_heads` gives the rotated heads for such a pair of streams; `attend` runs the
attention backend that can take an arbitrary mask (`backends.py`) and returns the output
projection. (Release-scheme and study-variant masks need no new attention: they are 4D masks
given to the family's own ordinary layers.)

What differs per family lives in a `HeadProjection` (docs/design.md, "Decoder families"):
* `SeparateProjections`: `q_proj`, `k_proj`, `v_proj` (Llama, Mistral, Qwen2 — whose biases live
  inside the Linear layers — and converted InternLM2);
* `QKNormProjections`: the same plus a per-head RMSNorm on queries and keys before RoPE (Qwen3);
* `FusedQKVProjection`: one `qkv_proj` whose output is [q | k | v] (Phi-3).
Residual dropout around attention / FFN (Phi-3's `resid_*_dropout`) is part of the projection
object too, so a layer never looks for family-specific attributes.
"""

from __future__ import annotations

import torch
from torch import nn

from .backends import masked_attention_interface
from .zero3_params import is_partitioned


def rotate_half(states: torch.Tensor) -> torch.Tensor:
    half = states.shape[-1] // 2
    return torch.cat((-states[..., half:], states[..., :half]), dim=-1)


def apply_rope(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on heads [B, H, S, hd] with per-token cos/sin [B, S, r]; only the first r dims rotate
    (r < hd is partial rotary, e.g. Phi-3 configs with `partial_rotary_factor` < 1)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, S, r]
    rotary_dim = cos.shape[-1]
    rotated, passed = states[..., :rotary_dim], states[..., rotary_dim:]
    rotated = rotated * cos + rotate_half(rotated) * sin
    return torch.cat([rotated, passed], dim=-1) if passed.shape[-1] else rotated


def _heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, S, H*hd] -> [B, H, S, hd]."""
    return states.view(*states.shape[:-1], -1, head_dim).transpose(1, 2)


class SeparateProjections:
    """q_proj / k_proj / v_proj Linear layers (with or without bias)."""

    def queries(self, attn: nn.Module, states: torch.Tensor) -> torch.Tensor:
        return _heads(attn.q_proj(states), attn.head_dim)  # [B, H, S, hd]

    def keys(self, attn: nn.Module, states: torch.Tensor) -> torch.Tensor:
        return _heads(attn.k_proj(states), attn.head_dim)  # [B, Hkv, S, hd]

    def keys_values(self, attn: nn.Module, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys(attn, states), _heads(attn.v_proj(states), attn.head_dim)

    def after_attention(self, layer: nn.Module, output: torch.Tensor) -> torch.Tensor:
        """The attention output as the residual adds it (a family may apply dropout here)."""
        return output

    def after_mlp(self, layer: nn.Module, output: torch.Tensor) -> torch.Tensor:
        return output


class QKNormProjections(SeparateProjections):
    """Qwen3: RMSNorm over each query / key head (`q_norm`, `k_norm`) before RoPE."""

    def queries(self, attn, states):
        return attn.q_norm(attn.q_proj(states).view(*states.shape[:-1], -1, attn.head_dim)).transpose(1, 2)

    def keys(self, attn, states):
        return attn.k_norm(attn.k_proj(states).view(*states.shape[:-1], -1, attn.head_dim)).transpose(1, 2)


class FusedQKVProjection(SeparateProjections):
    """Phi-3: one `qkv_proj` whose output is [queries | keys | values]; residual dropouts.

    Each stream gets only the rows it needs: the queries rows for the query stream, the key (and
    value) rows for the key stream, by slicing the weight. Under DeepSpeed ZeRO-3 the weight is a
    shard outside the module's own call, so there the module is called (which gathers it) and the
    unused part of its output is dropped, as the authors' release always does; so is a wrapped
    `qkv_proj` (LoRA, quantization).
    """

    def _rows(self, attn, part: str) -> slice:
        query_size = attn.config.num_attention_heads * attn.head_dim
        kv_size = attn.config.num_key_value_heads * attn.head_dim
        return {"q": slice(0, query_size), "k": slice(query_size, query_size + kv_size),
                "kv": slice(query_size, query_size + 2 * kv_size)}[part]

    def _project(self, attn, states, part: str) -> torch.Tensor:
        rows, linear = self._rows(attn, part), attn.qkv_proj
        # Only a plain Linear may be sliced: a wrapped one (a LoRA adapter, a quantized layer) adds to or
        # replaces its weight inside its own call, so it is called whole, as a ZeRO-3 shard is.
        if type(linear) is not nn.Linear or is_partitioned(linear.weight):
            return linear(states)[..., rows]
        bias = linear.bias[rows] if linear.bias is not None else None
        return nn.functional.linear(states, linear.weight[rows], bias)

    def queries(self, attn, states):
        return _heads(self._project(attn, states, "q"), attn.head_dim)

    def keys(self, attn, states):
        return _heads(self._project(attn, states, "k"), attn.head_dim)

    def keys_values(self, attn, states):
        keys, values = self._project(attn, states, "kv").chunk(2, dim=-1)
        return _heads(keys, attn.head_dim), _heads(values, attn.head_dim)

    def after_attention(self, layer, output):
        return layer.resid_attn_dropout(output)

    def after_mlp(self, layer, output):
        return layer.resid_mlp_dropout(output)


HeadProjection = SeparateProjections  # the interface every family's projection implements


def project_heads(attn: nn.Module, projection: HeadProjection, query_in: torch.Tensor, key_in: torch.Tensor,
                  query_rotary: tuple[torch.Tensor, torch.Tensor], key_rotary: tuple[torch.Tensor, torch.Tensor],
                  with_values: bool = True):
    """Rotated query heads [B, H, Q, hd] of `query_in` [B, Q, D] and key / value heads
    [B, Hkv, K, hd] of `key_in` [B, K, D], each stream rotated by its own RoPE (cos, sin) at its
    positions (the decoder's `rotary_emb(hidden, positions)`, computed once per forward); values
    None without `with_values` (attention scores alone need none)."""
    query = projection.queries(attn, query_in)
    if with_values:
        key, value = projection.keys_values(attn, key_in)
    else:
        key, value = projection.keys(attn, key_in), None
    return apply_rope(query, *query_rotary), apply_rope(key, *key_rotary), value


def attend(attn: nn.Module, projection: HeadProjection, query_in: torch.Tensor, key_in: torch.Tensor,
           query_rotary: tuple[torch.Tensor, torch.Tensor], key_rotary: tuple[torch.Tensor, torch.Tensor], mask,
           past_key_values=None, cached_keys: int = 0) -> torch.Tensor:
    """Attention of `query_in` [B, Q, D] over `key_in` [B, K, D] under `mask` (additive float
    [B, 1, Q, K], or a flex block mask: `llava.model.masks.render_mask`); returns the output
    projection [B, Q, D].

    With a cache, the first `cached_keys` keys / values are stored for layer `attn.layer_idx`
    (ProxyV caches the natural sequence, never the proxies that follow it).
    """
    query, key, value = project_heads(attn, projection, query_in, key_in, query_rotary, key_rotary)
    if past_key_values is not None:
        past_key_values.update(key[:, :, :cached_keys], value[:, :, :cached_keys], attn.layer_idx)
    output, _ = masked_attention_interface(attn.config)(
        attn, query, key, value, mask,
        dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling,
    )
    return attn.o_proj(output.reshape(*query_in.shape[:-1], -1).contiguous())
