"""Attention masks built from a layout's position ids, once per forward.

Masks here are additive float tensors (0 where a query may look, the dtype's minimum where not):
eager attention treats a *bool* 4D mask as additive and silently mis-computes, while a float mask
means the same thing to eager and SDPA.
"""

import torch


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] bool visibility -> [B, 1, Q, K] additive float mask."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None]


def position_causal_visibility(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, T] bool: query q sees key k when k is a real token with position(k) <= position(q).

    This is causality by position, which the authors' release uses; with positions that grow along
    the sequence it is the ordinary causal mask. Every query also sees itself, so padding rows are
    never fully masked (a fully masked softmax row is NaN in eager attention).
    """
    key_is_real = attention_mask.bool()[:, None, :]  # [B, 1, T]
    visible = (position_ids[:, None, :] <= position_ids[:, :, None]) & key_is_real  # [B, T, T]
    return visible | torch.eye(position_ids.shape[1], dtype=torch.bool, device=position_ids.device)
