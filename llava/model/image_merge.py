"""How an image's crops become tokens of the LLM sequence: the config's `mm_patch_merge_type`.

* `flat_newline` (ours and the ProxyV authors'; ProxyV, VisionZip and PyramidDrop need it): every
  crop's `g*g` tokens in raster order, then one `image_newline` token. `llava.model.layout` builds it
  from the crops directly, so ProxyV knows where each crop sits.
* LLaVA-NeXT's layouts, for running the official LLaVA-1.5 / 1.6 checkpoints (`merge_image` below):
  - an `image_aspect_ratio` other than `anyres` (LLaVA-1.5's `pad`): one crop, `g*g` tokens, no newline;
  - `flat`: all crops' tokens one after another, no newline;
  - `spatial`: the base crop, then the AnyRes tiles merged into one `(rows*g) x (cols*g)` grid read
    row by row, no newline;
  - `spatial_unpad`: as `spatial`, with the rows and columns AnyRes padded cut away (`unpad_image`)
    and an `image_newline` token ending every row of the grid.

Which one a saved config means (`merge_type_of_saved_config`): our older saves and the authors'
release say `spatial_unpad` but were built flat with a newline per crop; they carry
`image_newline_positions` (ours) or `proxyv` (theirs), which LLaVA-NeXT's configs never do. A LLaVA
config without `mm_patch_merge_type` is LLaVA's default, `flat`; a plain language model's config
(no `mm_vision_tower`) read into a LLaVA class keeps ours.
"""

from __future__ import annotations

import torch

from llava.mm_utils import get_anyres_image_grid_shape

from .layout import TOKEN_NEWLINE, TOKEN_VISION, ImageBlock

FLAT_NEWLINE = "flat_newline"
LLAVA_NEXT_MERGE_TYPES = ("flat", "spatial", "spatial_unpad")
PATCH_MERGE_TYPES = (FLAT_NEWLINE, *LLAVA_NEXT_MERGE_TYPES)


def merge_type_of_saved_config(values: dict) -> str:
    """The layout a config file describes (see the module docstring)."""
    saved = values.get("mm_patch_merge_type")
    if saved == FLAT_NEWLINE or "image_newline_positions" in values or values.get("proxyv") is not None:
        return FLAT_NEWLINE
    if "mm_vision_tower" not in values:  # a plain LLM's config read into a LLaVA class (PEFT does): our default
        return saved or FLAT_NEWLINE
    return saved or "flat"


def uses_image_newline(config) -> bool:
    """Whether the layout has an `image_newline` parameter (LLaVA-NeXT creates it for `unpad` only)."""
    return config.mm_patch_merge_type in (FLAT_NEWLINE, "spatial_unpad")


def unpad_image(features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """[D, H, W] features of the padded AnyRes canvas -> the rows / columns that show the image of
    `image_size` (width, height); the padding was split evenly on both sides."""
    width, height = image_size
    current_height, current_width = features.shape[1:]
    if width / height > current_width / current_height:  # padding above and below
        new_height = int(height * (current_width / width))
        padding = (current_height - new_height) // 2
        return features[:, padding: current_height - padding, :]
    new_width = int(width * (current_height / height))
    padding = (current_width - new_width) // 2
    return features[:, :, padding: current_width - padding]


def _grid(tiles: torch.Tensor, rows: int, cols: int, side: int) -> torch.Tensor:
    """[rows*cols, side*side, D] tiles -> [D, rows*side, cols*side], one 2D feature map."""
    dim = tiles.shape[-1]
    grid = tiles.view(rows, cols, side, side, dim).permute(4, 0, 2, 1, 3)  # [D, rows, side, cols, side]
    return grid.reshape(dim, rows * side, cols * side)


def _anyres_grid(config, crops: int, tokens_per_crop: int, image_size, tower_image_size: int) -> tuple[int, int, int]:
    """(rows, cols, g) of the AnyRes tiles of an image of `image_size` (width, height); a ValueError when
    the size is missing or does not give `crops - 1` tiles."""
    if image_size is None:
        raise ValueError(f"mm_patch_merge_type '{config.mm_patch_merge_type}' with AnyRes needs each image's "
                         "size: pass image_sizes.")
    cols, rows = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, tower_image_size)
    if rows * cols != crops - 1:
        raise ValueError(f"An image of size {tuple(image_size)} gives {rows}x{cols} AnyRes tiles, but {crops - 1} "
                         "tile crops were passed; process the image with the model's config.")
    return rows, cols, int(round(tokens_per_crop ** 0.5))


def merge_image(features: torch.Tensor, config, image_size: tuple[int, int] | None, newline: torch.Tensor | None,
                tower_image_size: int) -> ImageBlock:
    """LLaVA-NeXT's tokens for one image: `features` [C, g*g, D] (base crop first) -> ImageBlock."""
    crops, tokens, dim = features.shape
    merge_type = config.mm_patch_merge_type
    if config.image_aspect_ratio != "anyres" or merge_type == "flat":
        embeds = features.reshape(-1, dim)  # [C*g*g, D]
        return ImageBlock(embeds, torch.full((embeds.shape[0],), TOKEN_VISION, dtype=torch.long))
    base = features[0]  # [g*g, D]
    if crops == 1:  # LLaVA-NeXT's single-crop case: the base crop (and one newline under unpad)
        parts = [base] + ([newline[None].to(base.dtype)] if merge_type == "spatial_unpad" else [])
        embeds = torch.cat(parts)
        kinds = torch.full((embeds.shape[0],), TOKEN_VISION, dtype=torch.long)
        kinds[tokens:] = TOKEN_NEWLINE
        return ImageBlock(embeds, kinds)
    rows, cols, side = _anyres_grid(config, crops, tokens, image_size, tower_image_size)
    if merge_type == "spatial":  # the grid's rows one after another
        tiles = features[1:].view(rows, cols, side, side, dim).permute(0, 2, 1, 3, 4).reshape(-1, dim)
        kinds = torch.full((tokens + tiles.shape[0],), TOKEN_VISION, dtype=torch.long)
        return ImageBlock(torch.cat([base, tiles]), kinds)
    grid = unpad_image(_grid(features[1:], rows, cols, side), image_size)  # [D, H, W]
    height, width = grid.shape[1:]
    column = newline.to(grid.dtype)[:, None, None].expand(dim, height, 1)
    rows_with_newline = torch.cat([grid, column], dim=2).flatten(1, 2).transpose(0, 1)  # [H*(W+1), D]
    kinds = torch.full((height, width + 1), TOKEN_VISION, dtype=torch.long)
    kinds[:, -1] = TOKEN_NEWLINE
    base_kinds = torch.full((tokens,), TOKEN_VISION, dtype=torch.long)
    return ImageBlock(torch.cat([base, rows_with_newline]), torch.cat([base_kinds, kinds.flatten()]))


def image_token_counts(config, num_crops: int, tokens_per_crop: int, image_size: tuple[int, int] | None,
                       tower_image_size: int) -> tuple[int, int]:
    """(vision tokens, newline tokens) one image takes in the LLM sequence under `config`'s layout,
    without building it; `tokens_per_crop` is what the tower returns per crop."""
    merge_type, anyres = config.mm_patch_merge_type, config.image_aspect_ratio == "anyres"
    if merge_type == FLAT_NEWLINE:
        return num_crops * tokens_per_crop, num_crops
    if not anyres or merge_type in ("flat", "spatial"):
        return num_crops * tokens_per_crop, 0
    if num_crops == 1:
        return tokens_per_crop, 1
    rows, cols, side = _anyres_grid(config, num_crops, tokens_per_crop, image_size, tower_image_size)
    height, width = unpad_image(torch.empty(0, rows * side, cols * side), image_size).shape[1:]
    return tokens_per_crop + height * width, height
