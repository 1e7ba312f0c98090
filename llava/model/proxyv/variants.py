"""The decoder variants from layer `s` on, one registry row each: ProxyV and the paper's study variants.

A `DecoderVariant` says everything the model, the backend policy and the benchmark need to know
about a variant, so no module branches on its name:
* `makes_proxies`: proxies are created entering layer `s` (ProxyV only);
* `two_stream_layers`: layers `s..L-1` are two-stream ProxyV layers (the masked variant keeps the
  ordinary layers and only changes their mask);
* `full_stream_module`: the per-layer module that updates the full vision tokens (`VisionMLP`,
  `UnguidedVisionMLP`, or None: the layer's own FFN), and `update_full`, how it is applied;
* `masks_ordinary_layers`: its ordinary layers need an arbitrary mask (no flash-attention there);
* `trained`: it adds weights that must be trained (the masked variant is training-free).
The analytic FLOPs of a variant's layer are `llava.eval.flops.study_layer_flops` keyed by its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .modules import UnguidedVisionMLP, VisionMLP, proxy_guidance


def guided_update(layer, full, new_proxies, assignment, plan, module: VisionMLP) -> torch.Tensor:
    """ProxyV's step 4: the layer's new proxies guide `module`'s update of the full stream [N, G, D]."""
    config = layer.self_attn.config
    context = module.context_proj(plan.crop_proxies(new_proxies))  # [N, n, d_m]
    if config.learned_proxy_guidance == "spatial":
        assignment = None  # the authors' Phi-3 release: learned proxies, spatial copy back
    guidance = proxy_guidance(context, assignment, config.proxy_grid_size, config.proxyv_reduce_factor)
    if full.shape[0] == 0:  # a text-only training batch: no crops, empty tensors of mismatched widths
        guidance = guidance[:, : full.shape[1]]
    return module(full, guidance)


def unguided_update(layer, full, new_proxies, assignment, plan, module: UnguidedVisionMLP) -> torch.Tensor:
    """`vision_mlp`: a light MLP on the full stream, no proxies."""
    return module(full)


def own_ffn_update(layer, full, new_proxies, assignment, plan, module: None) -> torch.Tensor:
    """`skip_vision_attention`: the layer's own FFN with its residual, as if attention added nothing."""
    return full + layer.projection.after_mlp(layer, layer.mlp(layer.post_attention_layernorm(full)))


@dataclass(frozen=True)
class DecoderVariant:
    name: str
    makes_proxies: bool
    two_stream_layers: bool
    full_stream_module: type | None
    update_full: Callable | None
    masks_ordinary_layers: bool
    trained: bool


DECODER_VARIANTS: dict[str, DecoderVariant] = {variant.name: variant for variant in (
    DecoderVariant("proxyv", True, True, VisionMLP, guided_update, False, True),
    DecoderVariant("mask_vision_attention", False, False, None, None, True, False),
    DecoderVariant("skip_vision_attention", False, True, None, own_ffn_update, False, True),
    DecoderVariant("vision_mlp", False, True, UnguidedVisionMLP, unguided_update, False, True),
)}
PROXYV_VARIANTS = tuple(DECODER_VARIANTS)


def decoder_variant(name: str) -> DecoderVariant:
    if name not in DECODER_VARIANTS:
        raise ValueError(f"proxyv_variant must be one of {', '.join(DECODER_VARIANTS)}, got '{name}'.")
    return DECODER_VARIANTS[name]
