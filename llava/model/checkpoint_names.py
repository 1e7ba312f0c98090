"""Checkpoint parameter names in the LLaVA / ProxyV release layout.

transformers 5's `CLIPVisionModel` no longer has a `vision_model` level, but LLaVA checkpoints
(and the ProxyV release) name the tower's weights `model.vision_tower.vision_tower.vision_model.*`.
This renaming, registered with transformers' conversion mapping, maps those names on load and
writes them back on save, so our checkpoints keep the layout other LLaVA code expects.
"""

from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming


def register_release_weight_names(class_name: str) -> None:
    """Use the release names for the vision tower's weights in checkpoints of `class_name`."""
    register_checkpoint_conversion_mapping(
        class_name,
        [WeightRenaming(source_patterns=r"vision_tower\.vision_tower\.vision_model\.", target_patterns="vision_tower.vision_tower.")],
    )
