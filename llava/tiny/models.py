"""Build tiny random-init models for offline tests and demos.

* ``build_tiny_clip``: a CLIP vision tower with the real CLIP-L/336 geometry (336 px images, 14 px
  patches, so 24x24 = 576 patch tokens plus CLS) but tiny widths, with a matching PIL-backend CLIP
  image processor config.
* ``build_tiny_llm``: a tiny Vicuna-like ``LlamaForCausalLM`` saved together with its tokenizer.

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
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

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
    "attention_bias": False,
    "mlp_bias": False,
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


def tiny_llm_config(tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> LlamaConfig:
    """The tiny Vicuna-like Llama config for ``tokenizer``; keyword overrides replace defaults."""
    values = dict(TINY_LLM_CONFIG)
    values.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def build_tiny_llm(
    out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **overrides: Any
) -> Path:
    """Save a random-init tiny ``LlamaForCausalLM`` and ``tokenizer`` together under ``out_dir``.

    The vocabulary size and the bos/eos/pad ids come from the tokenizer; ``overrides`` replace any
    config value (e.g. ``num_hidden_layers=2``).
    """
    out_dir = Path(out_dir)
    config = tiny_llm_config(tokenizer, **overrides)
    model = _seeded_init(LlamaForCausalLM, config, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Saved tiny Llama (%d parameters, vocab %d, seed %d) with its tokenizer to %s",
        num_params,
        config.vocab_size,
        seed,
        out_dir,
    )
    return out_dir


__all__ = ["build_tiny_clip", "build_tiny_llm", "tiny_clip_image_processor", "tiny_llm_config"]
