"""Build tiny random-init models for offline tests and demos.

* ``build_tiny_clip``: a CLIP vision tower that reads CLIP-L/336's 336 px input with the CLIP-L/336
  image processor (PIL backend) but is tiny: 56 px patches, so 6x6 = 36 patch tokens plus CLS per crop
  (each cell of the tiny scenes' 3x3 grid is 2x2 patches), 64 wide, 3 layers. Its position
  embeddings start as a 2-D sinusoidal code, not at random: a random tiny tower's positions are
  drowned by its patch features, and the tiny questions are about where things are.
  ``llava.tiny.pretrain_clip`` then trains it on the training pictures.
* ``build_tiny_llm``: a tiny Vicuna-like decoder saved together with its tokenizer: a
  ``LlamaForCausalLM`` by default, or the same shape in another decoder family's own classes
  (``family="qwen2"``, ``"qwen3"``, ``"phi3"``, ``"mistral"``; see ``llava.model.FAMILIES``).

Both save with ``save_pretrained`` so the usual ``from_pretrained`` loaders read them offline, and both
are deterministic: the same seed gives bit-identical weights. The global torch RNG is left untouched.
"""

from __future__ import annotations

import logging
import math
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
CLIP_PATCH_SIZE = 56
CLIP_HIDDEN_SIZE = 64
TINY_PROXYV_REDUCE_FACTOR = 2  # ProxyV's r on the tiny CLIP: its 6x6 patches per crop -> 3x3 proxies, one per scene cell
POSITION_CODE_SCALE = 1.0  # the code's amplitude; a random patch embedding's outputs are about this size
POSITION_CODE_MAX_PERIOD = 100.0  # in patches: the slowest of the code's frequencies

TINY_CLIP_CONFIG: dict[str, Any] = {
    "image_size": CLIP_IMAGE_SIZE,
    "patch_size": CLIP_PATCH_SIZE,
    "num_channels": 3,
    "hidden_size": CLIP_HIDDEN_SIZE,
    "intermediate_size": 2 * CLIP_HIDDEN_SIZE,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "projection_dim": CLIP_HIDDEN_SIZE,
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


def sinusoidal_position_code(grid: int, hidden_size: int) -> torch.Tensor:
    """A 2-D sinusoidal code for a ``grid`` x ``grid`` patch raster, [grid * grid, hidden_size]: the row's
    sines and cosines in the first half of the features, the column's in the second."""
    if hidden_size % 4:
        raise ValueError(f"a 2-D sinusoidal code needs a hidden size divisible by 4, got {hidden_size}")
    quarter = hidden_size // 4
    frequencies = torch.exp(-math.log(POSITION_CODE_MAX_PERIOD) * torch.arange(quarter) / quarter)  # [D/4]
    angles = torch.arange(grid, dtype=torch.float32)[:, None] * frequencies  # [grid, D/4]
    per_index = torch.cat([angles.sin(), angles.cos()], dim=1)  # [grid, D/2]
    rows = per_index[:, None, :].expand(grid, grid, -1)  # [grid, grid, D/2]
    cols = per_index[None, :, :].expand(grid, grid, -1)  # [grid, grid, D/2]
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, hidden_size)


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny ``CLIPVisionModel`` (random weights, sinusoidal patch positions) and its processor config."""
    out_dir = Path(out_dir)
    config = CLIPVisionConfig(**TINY_CLIP_CONFIG)
    model = _seeded_init(CLIPVisionModel, config, seed)
    grid = config.image_size // config.patch_size
    with torch.no_grad():  # row 0 is the CLS token's; it keeps its random embedding
        model.embeddings.position_embedding.weight[1:] = POSITION_CODE_SCALE * sinusoidal_position_code(
            grid, config.hidden_size)
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


__all__ = ["TINY_FAMILY_OVERRIDES", "TINY_PROXYV_REDUCE_FACTOR", "build_tiny_clip", "sinusoidal_position_code", "build_tiny_llm", "tiny_clip_image_processor", "tiny_llm_config"]
