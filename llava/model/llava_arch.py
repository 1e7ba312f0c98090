"""Vision tower + projector + image newline, and the multimodal input step shared by all decoders.

`LlavaMetaModel` is mixed into the inner decoder model (it owns `vision_tower`, `mm_projector`,
`image_newline`, the names LLaVA checkpoints use). `LlavaMetaForCausalLM` is mixed into the
causal-LM class and turns `(input_ids with placeholders, images)` into embeddings plus a
`MultimodalLayout` through `llava.model.layout`.
"""

import math

import torch
from torch import nn
from transformers import initialization as init

from llava.constants import IMAGE_TOKEN_INDEX

from .image_merge import FLAT_NEWLINE, merge_image, uses_image_newline
from .layout import MultimodalLayout, build_multimodal_sequence
from .multimodal_encoder.builder import build_vision_tower
from .multimodal_projector.builder import build_vision_projector


class LlavaMetaModel:
    """Mixin for the inner model: the multimodal modules, built from the config."""

    def init_multimodal_modules(self, config) -> None:
        if not getattr(config, "mm_vision_tower", None):
            return
        self.vision_tower = build_vision_tower(config)
        if config.mm_hidden_size is None:
            config.mm_hidden_size = self.vision_tower.hidden_size
        if config.mm_vision_tower_config is None:
            config.mm_vision_tower_config = self.vision_tower.config.to_diff_dict()
        self.mm_projector = build_vision_projector(config)
        if uses_image_newline(config):  # LLaVA-NeXT's flat / spatial layouts and LLaVA-1.5 have none
            self.image_newline = nn.Parameter(torch.randn(config.hidden_size) / math.sqrt(config.hidden_size))

    def get_vision_tower(self):
        return getattr(self, "vision_tower", None)

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self and hasattr(self, "image_newline"):
            init.normal_(self.image_newline, mean=0.0, std=1 / math.sqrt(self.config.hidden_size))


def split_image_crops(images) -> list[torch.Tensor]:
    """Normalise LLaVA's `images` argument to one [C, 3, H, W] tensor per image.

    Accepted: a 5D tensor [N, C, 3, H, W]; a 4D tensor [N, 3, H, W] (one crop each); a list of
    [C, 3, H, W] or [3, H, W] tensors (the form `process_images` returns for mixed crop counts).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim == 5:
            return list(images.unbind(0))
        if images.ndim == 4:
            return list(images.unsqueeze(1).unbind(0))
        raise ValueError(f"images tensor must be 4D [N,3,H,W] or 5D [N,C,3,H,W], got shape {tuple(images.shape)}.")
    crops = []
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"images[{index}] must be a [C,3,H,W] or [3,H,W] tensor, got {shape}.")
        crops.append(image if image.ndim == 4 else image.unsqueeze(0))
    return crops


class LlavaMetaForCausalLM:
    """Mixin for the causal-LM class: image encoding and the multimodal input step."""

    def get_vision_tower(self):
        return self.model.get_vision_tower()

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] crops -> [N, g*g, D] projected features."""
        features = self.model.vision_tower(pixel_values)  # [N, g*g, d_vis]
        projector_dtype = next(self.model.mm_projector.parameters(), features).dtype
        return self.model.mm_projector(features.to(projector_dtype))

    def prepare_inputs_labels_for_multimodal(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images,
        image_sizes=None,
        padding_side: str = "right",
    ) -> tuple[torch.Tensor, torch.Tensor | None, MultimodalLayout]:
        """Embed the batch with every `<image>` placeholder expanded; see `build_multimodal_sequence`."""
        crops = split_image_crops(images) if images is not None else []
        if image_sizes is not None and len(image_sizes) != len(crops):
            raise ValueError(f"Got {len(crops)} images but {len(image_sizes)} image_sizes; give one size per image.")
        if crops and self.get_vision_tower() is None:
            raise ValueError("Images were given but the model has no vision tower (config.mm_vision_tower is empty).")
        image_features, unused_term = [], None
        newline = getattr(self.model, "image_newline", None)
        if crops:
            features = self.encode_images(torch.cat(crops, dim=0))  # [sum C, g*g, D]
            image_features = list(features.split([c.shape[0] for c in crops], dim=0))
            if self.config.mm_patch_merge_type != FLAT_NEWLINE:  # LLaVA-NeXT's layouts: blocks merged here
                tower_size = self.get_vision_tower().config.image_size
                sizes = image_sizes if image_sizes is not None else [None] * len(crops)
                image_features = [merge_image(feature, self.config, size, newline, tower_size)
                                  for feature, size in zip(image_features, sizes)]
        elif self.training and self.get_vision_tower() is not None:
            # Where an image batch encodes its crops, so every rank runs the modules in the same order.
            unused_term = self._unused_vision_path_term(input_ids.device)
        embeds, labels, layout = build_multimodal_sequence(
            input_ids,
            attention_mask,
            labels,
            image_features,
            self.get_input_embeddings(),
            newline,
            padding_side=padding_side,
            newline_scheme=self.config.image_newline_positions,
        )
        if unused_term is not None:
            embeds = embeds + unused_term.to(embeds.dtype)
        return embeds, labels, layout

    def _unused_vision_path_term(self, device: torch.device) -> torch.Tensor:
        """0 * (tower + projector on a blank crop, + image newline): a training batch without images
        still touches every multimodal parameter, so ZeRO-3 ranks gather the same parameters each
        step (ranks that diverge hang) and those parameters get a zero gradient, not None."""
        tower = self.get_vision_tower()
        size = tower.config.image_size
        blank = torch.zeros(1, 3, size, size, dtype=tower.dtype, device=device)  # [1, 3, H, W]
        term = self.encode_images(blank).sum()
        newline = getattr(self.model, "image_newline", None)
        if newline is not None:
            term = term + newline.sum()
        return 0 * term

    @staticmethod
    def has_image_placeholders(input_ids: torch.Tensor | None) -> bool:
        return input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any())

    def runs_multimodal_step(self, input_ids: torch.Tensor | None, images) -> bool:
        """Whether the forward goes through `prepare_inputs_labels_for_multimodal`: when there are
        images or placeholders, and in training always (see `_unused_vision_path_term`)."""
        if images is not None or self.has_image_placeholders(input_ids):
            return True
        return self.training and input_ids is not None and self.get_vision_tower() is not None
