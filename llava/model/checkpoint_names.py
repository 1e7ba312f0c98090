"""Checkpoint parameter names in the LLaVA / ProxyV release layout, written down once.

The prefixes below name each group of weights (the parts `--mm_tunable_parts` trains, what stage 1
saves, what a fresh model starts from initialisation); every family uses the same names, since
transformers' decoders all call them `model.embed_tokens`, `model.layers`, `model.norm`, `lm_head`.

transformers 5's `CLIPVisionModel` no longer has a `vision_model` level, but LLaVA checkpoints
(and the ProxyV release) name the tower's weights `model.vision_tower.vision_tower.vision_model.*`.
This renaming, registered with transformers' conversion mapping, maps those names on load and
writes them back on save, so our checkpoints keep the layout other LLaVA code expects.
"""

from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

TOWER_PREFIXES = ("model.vision_tower.",)
PROJECTOR_PREFIXES = ("model.mm_projector.", "model.image_newline")
PROXYV_MODULE_PREFIXES = ("model.vision_mlp_layers.", "model.proxyv_initializer.")
DECODER_LAYERS_PREFIX = "model.layers."
LANGUAGE_MODEL_PREFIXES = ("model.embed_tokens.", DECODER_LAYERS_PREFIX, "model.norm.", "lm_head.")
MULTIMODAL_PREFIXES = TOWER_PREFIXES + PROJECTOR_PREFIXES + PROXYV_MODULE_PREFIXES
# Weights a LoRA run always saves beside its adapter: not in the base language model, not the tower's own.
NEW_MODULE_PREFIXES = PROJECTOR_PREFIXES + PROXYV_MODULE_PREFIXES


def register_release_weight_names(class_name: str) -> None:
    """Use the release names for the vision tower's weights in checkpoints of `class_name`."""
    register_checkpoint_conversion_mapping(
        class_name,
        [WeightRenaming(source_patterns=r"vision_tower\.vision_tower\.vision_model\.", target_patterns="vision_tower.vision_tower.")],
    )
