"""Attention masks built from a layout's per-token facts, once per forward, for any attention backend.

Every mask that is not "causal by index over real tokens" (ProxyV layers, release-scheme newlines,
PyramidDrop stages, the `mask_vision_attention` study variant) is written once, as a `MaskRule`: a
function `visible(b, q, kv)` of sample, query and key indices that reads small per-token tensors
(positions, token kinds, realness). The same function is rendered two ways:
* `dense()`: evaluated on broadcast index grids, a [B, Q, K] bool tensor, turned by
  `additive_mask` into the [B, 1, Q, K] float mask eager and sdpa take (0 where a query may look,
  the dtype's minimum where not). Eager attention treats a *bool* 4D mask as additive and silently
  mis-computes; a float mask means the same thing to both.
* `block_mask()`: a FlexAttention `BlockMask` whose `mask_mod` is the same function; on that path no
  dense [B, 1, Q, K] mask lives through the forward (on CUDA the block mask is built by a compiled
  `create_block_mask`, block by block; on CPU eagerly, which briefly holds one [B, 1, Q, K] bool).
`render_mask(rule, backend, dtype)` picks the rendering for an attention backend's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

FLEX_ATTENTION = "flex_attention"


@dataclass
class MaskRule:
    """Who may attend to whom in a [B, Q, K] attention: `visible(b, q, kv)` -> bool.

    `b`, `q`, `kv` are integer tensors that broadcast together (index grids for `dense`, scalars
    under FlexAttention's vmap); the function indexes per-token tensors with them, e.g.
    `positions[b, kv] <= positions[b, q]`, and must use only such elementwise tensor operations.
    """

    batch_size: int
    num_queries: int
    num_keys: int
    visible: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device

    def dense(self) -> torch.Tensor:
        """[B, Q, K] bool."""
        shape = (self.batch_size, self.num_queries, self.num_keys)
        batch = torch.arange(shape[0], device=self.device)[:, None, None]  # [B, 1, 1]
        query = torch.arange(shape[1], device=self.device)[None, :, None]  # [1, Q, 1]
        key = torch.arange(shape[2], device=self.device)[None, None, :]  # [1, 1, K]
        return self.visible(batch, query, key).expand(shape)

    def block_mask(self) -> BlockMask:
        """The same visibility as a FlexAttention block mask (heads share it)."""
        visible = self.visible

        def mask_mod(batch, head, query, key):  # FlexAttention's signature; the head does not matter
            return visible(batch, query, key)

        build = _compiled_create_block_mask() if self.device.type == "cuda" else create_block_mask
        return build(mask_mod, self.batch_size, None, self.num_queries, self.num_keys, device=self.device)


@cache
def _compiled_create_block_mask():
    """`create_block_mask` compiled once per process: it then builds the block mask block by block."""
    return torch.compile(create_block_mask)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] bool visibility -> [B, 1, Q, K] additive float mask."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None]


def render_mask(rule: MaskRule, backend: str, dtype: torch.dtype) -> torch.Tensor | BlockMask:
    """The mask `backend` (an attention implementation's name) takes: a `BlockMask` for
    flex_attention, else the additive float mask of `dtype`."""
    if backend == FLEX_ATTENTION:
        return rule.block_mask()
    return additive_mask(rule.dense(), dtype)


def position_causal_rule(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> MaskRule:
    """Over one sequence [B, T]: query q sees key k when k is a real token with position(k) <= position(q).

    This is causality by position, which the authors' release uses; with positions that grow along
    the sequence it is the ordinary causal mask. Every query also sees itself, so padding rows are
    never fully masked (a fully masked softmax row is NaN in eager attention).
    """
    key_is_real = attention_mask.bool()  # [B, T]

    def visible(b, q, kv):
        return ((position_ids[b, kv] <= position_ids[b, q]) & key_is_real[b, kv]) | (q == kv)

    batch_size, seq_len = position_ids.shape
    return MaskRule(batch_size, seq_len, seq_len, visible, position_ids.device)


def position_causal_visibility(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, T] bool of `position_causal_rule`."""
    return position_causal_rule(position_ids, attention_mask).dense()
