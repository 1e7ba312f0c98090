"""Build the vision tower named by a LLaVA config."""

from ..masks import FLEX_ATTENTION
from .clip_encoder import CLIPVisionTower


def build_vision_tower(config) -> CLIPVisionTower:
    """The tower from `mm_vision_tower` (path or hub name), with the config's layer choice.

    A config that carries `mm_vision_tower_config` (our checkpoints do) builds the tower's
    architecture without reading `mm_vision_tower`, so a saved checkpoint is self-contained.
    The tower runs with the LLaVA config's attention implementation (sdpa where that is
    flex_attention: the tower's attention has no mask, so flex would gain nothing and only compile)
    and its VisionZip options.
    """
    name = getattr(config, "mm_vision_tower", None)
    if not name:
        raise ValueError("The config has no `mm_vision_tower`; set it to a CLIP path or hub name.")
    return CLIPVisionTower(
        name,
        select_layer=getattr(config, "mm_vision_select_layer", -2),
        select_feature=getattr(config, "mm_vision_select_feature", "patch") or "patch",
        vision_config=getattr(config, "mm_vision_tower_config", None),
        attn_implementation=_tower_attn_implementation(getattr(config, "_attn_implementation", None)),
        token_reduction=getattr(config, "vision_token_reduction", None),
        visionzip_dominant=getattr(config, "visionzip_dominant", 360),
        visionzip_contextual=getattr(config, "visionzip_contextual", 40),
    )


def _tower_attn_implementation(llm_attn_implementation: str | None) -> str | None:
    return "sdpa" if llm_attn_implementation == FLEX_ATTENTION else llm_attn_implementation
