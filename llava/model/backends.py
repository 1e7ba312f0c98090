"""One policy for attention backends under arbitrary masks.

Some computations need a mask that is not "causal by index over real tokens": ProxyV layers, the
release newline positions (causal by position id), PyramidDrop's stages and the training-free
`mask_vision_attention` variant. eager and sdpa take such a mask as an additive float tensor;
flash-attention cannot. This module is the only place that knows it:
* `mask_limits_flash(config)` says why a config needs arbitrary masks in its *ordinary* layers (the
  builder then loads sdpa instead of flash-attention, with that reason in the log);
* `masked_attention_interface(config)` is the function masked layers call: the configured backend,
  or sdpa (logged once) where the configured one is flash-attention.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .proxyv.variants import decoder_variant

logger = logging.getLogger(__name__)
_said_sdpa_for_flash = False

# Every attention backend this package loads a model with (builder, CLI, training, benchmarks).
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2")


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """Plain attention with grouped key / value heads; returns ([B, Q, H, hd], weights [B, H, Q, K])."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)  # [B, H, K, hd]
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, H, Q, K]
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def masked_attention_interface(config):
    """The attention function for a layer whose mask is arbitrary (additive float [B, 1, Q, K])."""
    global _said_sdpa_for_flash
    name = config._attn_implementation
    if name == "eager":
        return eager_attention
    if name != "sdpa" and name.startswith("flash"):
        if not _said_sdpa_for_flash:
            logger.warning("Layers with ProxyV / position-based masks need an arbitrary mask that flash-attention "
                           "cannot take; they use sdpa (the other layers keep flash-attention).")
            _said_sdpa_for_flash = True
        name = "sdpa"
    return ALL_ATTENTION_FUNCTIONS[name]


def mask_limits_flash(config) -> str | None:
    """Why this config's ordinary layers need an arbitrary mask (so no flash-attention), or None."""
    if getattr(config, "image_newline_positions", "natural") == "release":
        return "the release newline positions make the causal mask follow position ids"
    if getattr(config, "pyramid_drop_layers", None):
        return "PyramidDrop masks every stage by position and real keys"
    variant = getattr(config, "proxyv_variant", None)
    if variant is not None and decoder_variant(variant).masks_ordinary_layers:
        return f"{variant} hides vision keys from vision queries with an explicit mask"
    return None


def require_masks_supported(config) -> None:
    """Refuse flash-attention for a model built directly (not through the builder) whose ordinary
    layers need arbitrary masks; the builder switches such a model to sdpa itself."""
    reason = mask_limits_flash(config)
    if reason and config._attn_implementation.startswith("flash"):
        raise ValueError(f"flash-attention cannot run this model: {reason}. Load it with "
                         "attn_implementation='sdpa' (llava.model.builder.load_pretrained_model does this for you).")
