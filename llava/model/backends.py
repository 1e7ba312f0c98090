"""One policy for attention backends under arbitrary masks.

Some computations need a mask that is not "causal by index over real tokens": ProxyV layers, the
release newline positions (causal by position id), PyramidDrop's stages and the training-free
`mask_vision_attention` variant. eager and sdpa take such a mask as an additive float tensor,
flex_attention as a block-sparse `BlockMask` (`llava.model.masks` renders both from one rule);
flash-attention cannot take one. This module is the only place that knows it:
* `mask_limits_flash(config)` says why a config needs arbitrary masks in its *ordinary* layers (the
  builder then loads flex_attention instead of flash-attention, with that reason in the log);
* `masked_backend(config)` names the backend masked layers run (and whose mask they build): the
  configured one, or under flash-attention flex_attention, logged once;
  `masked_attention_interface(config)` is its attention function.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .masks import FLEX_ATTENTION, BlockMask, MaskRule, render_mask
from .proxyv.variants import decoder_variant

logger = logging.getLogger(__name__)
_said_masked_backend_for_flash = False

# Every attention backend this package loads a model with (builder, CLI, training, benchmarks).
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", FLEX_ATTENTION, "flash_attention_2")


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


def masked_backend(config) -> str:
    """The backend a layer with an arbitrary mask runs: the configured one, except under
    flash-attention, where it is flex_attention (block-sparse masks); said once in the log."""
    global _said_masked_backend_for_flash
    name = config._attn_implementation
    if name.startswith("flash"):
        name = FLEX_ATTENTION
        if not _said_masked_backend_for_flash:
            logger.warning("Layers with ProxyV / position-based masks need an arbitrary mask that flash-attention "
                           "cannot take; they use %s (the other layers keep flash-attention).", name)
            _said_masked_backend_for_flash = True
    return name


def masked_attention_interface(config):
    """The attention function for a layer whose mask is arbitrary (`llava.model.masks.render_mask`
    of `masked_backend(config)`: an additive float [B, 1, Q, K] mask, or a flex `BlockMask`)."""
    name = masked_backend(config)
    if name == "eager":
        return eager_attention
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
    layers need arbitrary masks; the builder switches such a model to flex_attention / sdpa itself."""
    reason = mask_limits_flash(config)
    if reason and config._attn_implementation.startswith("flash"):
        raise ValueError(f"flash-attention cannot run this model: {reason}. Load it with "
                         "attn_implementation='flex_attention' or 'sdpa' (llava.model.builder.load_pretrained_model "
                         "does this for you).")


def render_layer_mask(rule: MaskRule, config, dtype: torch.dtype) -> torch.Tensor | BlockMask:
    """`rule` as the mask the masked layers of `config` take (`masked_backend`)."""
    return render_mask(rule, masked_backend(config), dtype)


def _runs_flex(config) -> bool:
    return FLEX_ATTENTION in (config._attn_implementation, masked_backend(config))


def check_flex_backward(config, device: torch.device, records_gradients) -> None:
    """FlexAttention has no backward on CPU: say so before a forward that records gradients
    (`records_gradients()` is asked only on CPU under flex), not from inside torch."""
    if device.type == "cpu" and _runs_flex(config) and records_gradients():
        raise ValueError("FlexAttention has no backward on CPU: run it under torch.no_grad() / "
                         "torch.inference_mode(), and train on CPU with attn_implementation='sdpa' "
                         "(flex_attention is for CUDA).")


def flex_compile_stance(config, device: torch.device):
    """The context a forward runs in: on CPU, FlexAttention runs unfused (eagerly), because torch's
    compiled CPU flex kernel fails to build once shapes change between calls with masks that read
    per-token tensors (torch 2.13: a C++ compile error on a new prompt length or a decoding step),
    and flex's speed matters on CUDA, where it stays compiled. Elsewhere nothing changes.

    The stance is process-wide (torch keeps it globally, not per thread): the web demo runs one
    generation at a time under its lock, so no other forward sees it change."""
    if device.type == "cpu" and _runs_flex(config):
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()
