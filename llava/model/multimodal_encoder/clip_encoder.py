"""CLIP vision tower: patch features of one hidden layer, CLS dropped, frozen by default.

The tower is an ordinary transformers `CLIPVisionModel` held as `self.vision_tower`, so LLaVA
checkpoints find its weights under `model.vision_tower.vision_tower.vision_model.*`. It runs with the
LLaVA model's attention implementation. With `token_reduction="visionzip"` each crop's patches are
reduced to `visionzip_dominant + visionzip_contextual` tokens (`llava.model.reduction.visionzip`).
"""

import logging

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.configuration_utils import PreTrainedConfig

from ..reduction.visionzip import (
    VISION_TOKEN_REDUCTIONS,
    check_visionzip_counts,
    cls_attention_and_keys,
    visionzip_select,
)
from ..zero3_params import copy_into, full_state

logger = logging.getLogger(__name__)

SELECT_FEATURES = ("patch", "cls_patch")
CLIP_TOWER_TYPES = ("clip", "clip_vision_model")  # a whole CLIP model's config, or its vision part's


def check_tower_type(name: str, values: dict, inline: bool = False) -> None:
    """A ValueError naming `mm_vision_tower` when its config is not a CLIP vision tower's (LLaVA-OneVision's
    SigLIP, EVA-CLIP, ...): no other tower is implemented, and loading one as CLIP would be silently wrong.
    An inlined `mm_vision_tower_config` must be the vision part itself (a whole CLIP model's config
    would build a default-sized tower)."""
    model_type = values.get("model_type", "clip_vision_model")
    if model_type not in (("clip_vision_model",) if inline else CLIP_TOWER_TYPES):
        raise ValueError(f"mm_vision_tower {name} is a {model_type!r} vision tower; only CLIP towers are supported "
                         "(SigLIP and EVA towers, e.g. LLaVA-OneVision's, are not).")


def tower_patches_per_crop(vision_tower_name: str) -> int:
    """Patch tokens per crop (g*g) of the CLIP tower at `vision_tower_name`, read from its config alone."""
    config = CLIPVisionConfig.from_pretrained(vision_tower_name)
    return (config.image_size // config.patch_size) ** 2


class CLIPVisionTower(nn.Module):
    """Turns pixel crops [N, 3, H, W] into patch features [N, g*g, d_vis]."""

    def __init__(
        self,
        vision_tower_name: str,
        select_layer: int = -2,
        select_feature: str = "patch",
        vision_config: dict | None = None,
        attn_implementation: str | None = None,
        token_reduction: str | None = None,
        visionzip_dominant: int = 360,
        visionzip_contextual: int = 40,
    ):
        super().__init__()
        if select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"Unknown mm_vision_select_feature '{select_feature}'. Known: {', '.join(SELECT_FEATURES)}."
            )
        self.vision_tower_name = vision_tower_name
        self.select_layer = select_layer
        self.select_feature = select_feature
        if vision_config is not None:
            check_tower_type(vision_tower_name, vision_config, inline=True)
        else:
            check_tower_type(vision_tower_name, PreTrainedConfig.get_config_dict(vision_tower_name)[0])
        if vision_config is not None:
            config = CLIPVisionConfig(**vision_config)
        else:
            config = CLIPVisionConfig.from_pretrained(vision_tower_name)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        # Weights come from the LLaVA checkpoint or from `load_pretrained_weights()`.
        self.vision_tower = CLIPVisionModel(config)
        self.vision_tower.requires_grad_(False)
        self._init_token_reduction(token_reduction, visionzip_dominant, visionzip_contextual)

    def _init_token_reduction(self, token_reduction, dominant: int, contextual: int) -> None:
        if token_reduction is not None and token_reduction not in VISION_TOKEN_REDUCTIONS:
            raise ValueError(f"Unknown vision_token_reduction '{token_reduction}'. Known: {', '.join(VISION_TOKEN_REDUCTIONS)}.")
        if token_reduction is not None and self.select_feature != "patch":
            raise ValueError("vision_token_reduction 'visionzip' needs mm_vision_select_feature 'patch'.")
        self.token_reduction = token_reduction
        self.visionzip_counts = (dominant, contextual)
        if token_reduction is not None:
            check_visionzip_counts(dominant, contextual, self.num_patches)
            self._selected_index()  # fails early on a select layer with no encoder layer behind it

    def load_pretrained_weights(self) -> None:
        """Load the tower's own weights from `vision_tower_name` (a local folder or a hub name)."""
        logger.info("Loading vision tower weights from %s", self.vision_tower_name)
        pretrained = CLIPVisionModel.from_pretrained(self.vision_tower_name)
        source = full_state(dict(pretrained.named_parameters()))
        target = dict(self.vision_tower.named_parameters())
        if set(source) != set(target):
            raise ValueError(f"The vision tower at {self.vision_tower_name} does not match the configured architecture.")
        copy_into(target, source)
        del pretrained

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def num_output_tokens(self) -> int:
        """Tokens per crop this tower returns: g*g, or the VisionZip counts."""
        return sum(self.visionzip_counts) if self.token_reduction else self.num_patches

    def _selected_index(self) -> int:
        """Index of the selected layer in `hidden_states` (0 = embeddings, i = output of encoder layer i-1)."""
        count = self.config.num_hidden_layers + 1
        if not -count <= self.select_layer < count or self.select_layer % count == 0:
            raise ValueError(f"VisionZip needs mm_vision_select_layer to be an encoder layer's output, got {self.select_layer}.")
        return self.select_layer % count

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, g*g, d_vis] (or [N, 1+g*g, d_vis] for `cls_patch`)."""
        outputs = self.vision_tower(pixel_values.to(self.dtype), output_hidden_states=True)
        features = outputs.hidden_states[self.select_layer]  # [N, 1+g*g, d_vis]
        if self.token_reduction == "visionzip":
            index = self._selected_index()
            layer = self.vision_tower.encoder.layers[index - 1]
            cls_attention, keys = cls_attention_and_keys(layer, outputs.hidden_states[index - 1])  # [N, G], [N, G, hd]
            return visionzip_select(features[:, 1:], cls_attention, keys, *self.visionzip_counts)
        if self.select_feature == "patch":
            features = features[:, 1:]
        return features
