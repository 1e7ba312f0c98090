"""Build a fresh LLaVA (or ProxyV) model from a pretrained language model and a CLIP tower.

This is where training starts (LLaVA's `initialize_vision_modules`): the LLM's weights are copied
in, the vision tower's own weights are loaded from `vision_tower`, and the projector, the image
newline and (for ProxyV) the guided-update modules start from their initialisation.
"""

import logging

import torch
from transformers import AutoConfig
from transformers.utils import logging as hf_logging

from .checkpoint_names import MULTIMODAL_PREFIXES
from .language_model.families import family_for_llm
from .model_registry import causal_lm_class_for_config
from .multimodal_encoder.clip_encoder import tower_patches_per_crop

logger = logging.getLogger(__name__)


def llava_config_from_llm(llm_config, vision_tower: str, proxyv_start_layer: int | None = None, **options):
    """A LLaVA config of the LLM's family (ProxyV when `proxyv_start_layer` is given) carrying its architecture.

    ProxyV's `per_crop_token_len` is the tower's patches per crop unless `options` give it, so that its
    proxy grid (and the check that `proxyv_reduce_factor` divides the crop's side) fits the tower.
    """
    classes = family_for_llm(llm_config.model_type)
    values = {k: v for k, v in llm_config.to_dict().items() if k not in ("model_type", "architectures")}
    values.update(mm_vision_tower=vision_tower, image_newline_positions="natural", **options)
    if proxyv_start_layer is None:
        return classes.config(**values)
    values.setdefault("per_crop_token_len", tower_patches_per_crop(vision_tower))
    return classes.proxyv_config(proxyv_start_layer=proxyv_start_layer, **values)


def build_llava_from_llm(
    llm_path: str,
    vision_tower: str,
    proxyv_start_layer: int | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    load_options: dict | None = None,
    **options,
):
    """LLaVA model = pretrained LLM + pretrained CLIP tower + fresh multimodal modules.

    Loading goes through `from_pretrained`, so under DeepSpeed ZeRO-3 (HF's deepspeed config
    active) the model is created partitioned and the tower weights are copied in gathered.
    `load_options` go to `from_pretrained` too (QLoRA's `quantization_config`).
    """
    config = llava_config_from_llm(AutoConfig.from_pretrained(llm_path), vision_tower, proxyv_start_layer, **options)
    model_class = causal_lm_class_for_config(config)  # baseline, ProxyV or PyramidDrop, as the config says
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the multimodal weights as missing: expected here
    try:
        model, info = model_class.from_pretrained(
            llm_path, config=config, dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True,
            **(load_options or {}),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["unexpected_keys"]:
        raise ValueError(f"The language model at {llm_path} has weights its family's LLaVA model does not: {sorted(info['unexpected_keys'])[:5]}")
    not_multimodal = [k for k in info["missing_keys"] if not k.startswith(MULTIMODAL_PREFIXES)]
    if not_multimodal:
        raise ValueError(f"The language model at {llm_path} lacks weights: {sorted(not_multimodal)[:5]}")
    logger.info("%d multimodal weights start from their initialisation", len(info["missing_keys"]))
    model.get_vision_tower().load_pretrained_weights()
    logger.info("Built %s from %s + %s", model_class.__name__, llm_path, vision_tower)
    return model
