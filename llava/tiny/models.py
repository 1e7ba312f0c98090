"""Build tiny random-init models for offline tests and demos.

* ``build_tiny_clip``: a CLIP vision tower with the real CLIP-L/336 geometry (336 px images, 14 px
  patches, so 24x24 = 576 patch tokens plus CLS) but tiny widths, with a matching PIL-backend CLIP
  image processor config.
* ``build_tiny_llm``: a tiny Vicuna-like decoder saved together with its tokenizer: a
  ``LlamaForCausalLM`` by default, or the same shape in another decoder family's own classes
  (``family="qwen2"``, ``"qwen3"``, ``"phi3"``, ``"mistral"``; see ``llava.model.FAMILIES``).

Both save with ``save_pretrained`` so the usual ``from_pretrained`` loaders read them offline, and both
are deterministic: the same seed gives bit-identical weights. The global torch RNG is left untouched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.model import FAMILIES

logger = logging.getLogger(__name__)

CLIP_IMAGE_SIZE = 336
CLIP_PATCH_SIZE = 14

TINY_CLIP_CONFIG: dict[str, Any] = {
    "image_size": CLIP_IMAGE_SIZE,
    "patch_size": CLIP_PATCH_SIZE,
    "num_channels": 3,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

TINY_LLM_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
# What a family's config needs beyond the shared tiny shape (its own layout comes with its classes).
TINY_FAMILY_OVERRIDES: dict[str, dict[str, Any]] = {
    "llama": {"attention_bias": False, "mlp_bias": False},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "phi3": {},
}


def _seeded_init(model_cls: type, config: Any, seed: int) -> torch.nn.Module:
    """Instantiate ``model_cls(config)`` with weights drawn from ``seed``, sparing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def tiny_clip_image_processor() -> CLIPImageProcessorPil:
    """The CLIP-L/336 image processor settings (PIL backend, as LLaVA-NeXT used)."""
    return CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a random-init tiny ``CLIPVisionModel`` (CLIP-L/336 geometry) and its processor config."""
    out_dir = Path(out_dir)
    config = CLIPVisionConfig(**TINY_CLIP_CONFIG)
    model = _seeded_init(CLIPVisionModel, config, seed)
    model.save_pretrained(out_dir)
    tiny_clip_image_processor().save_pretrained(out_dir)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("Saved tiny CLIP vision tower (%d parameters, seed %d) to %s", num_params, seed, out_dir)
    return out_dir


def tiny_llm_config(tokenizer: PreTrainedTokenizerBase, family: str = "llama", **overrides: Any) -> PretrainedConfig:
    """The tiny Vicuna-like config of ``family`` for ``tokenizer``; keyword overrides replace defaults."""
    if family not in TINY_FAMILY_OVERRIDES:
        raise ValueError(f"Unknown tiny model family '{family}'. Known: {', '.join(TINY_FAMILY_OVERRIDES)}.")
    values = {**TINY_LLM_CONFIG, **TINY_FAMILY_OVERRIDES[family]}
    values.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    values.update(overrides)
    return FAMILIES[family].family.config(**values)


def build_tiny_llm(
    out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0, family: str = "llama", **overrides: Any
) -> Path:
    """Save a random-init tiny decoder of ``family`` and ``tokenizer`` together under ``out_dir``.

    The vocabulary size and the bos/eos/pad ids come from the tokenizer; ``overrides`` replace any
    config value (e.g. ``num_hidden_layers=2``).
    """
    out_dir = Path(out_dir)
    config = tiny_llm_config(tokenizer, family, **overrides)
    model = _seeded_init(FAMILIES[family].family.causal_lm, config, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Saved tiny %s (%d parameters, vocab %d, seed %d) with its tokenizer to %s",
        family,
        num_params,
        config.vocab_size,
        seed,
        out_dir,
    )
    return out_dir


__all__ = ["TINY_FAMILY_OVERRIDES", "build_tiny_clip", "build_tiny_llm", "tiny_clip_image_processor", "tiny_llm_config"]
