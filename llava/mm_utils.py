"""Image and prompt helpers with LLaVA-NeXT's public names and exact behaviour.

Image side: AnyRes (`select_best_resolution`, `resize_and_pad_image`, `divide_to_patches`,
`process_anyres_image`), square padding (`expand2square`) and `process_images`, which produce the
same pixels as LLaVA-NeXT, the code the released checkpoints were trained with. Every image is
first brought to 8-bit RGB (`to_rgb`), whatever its PIL mode.

Prompt side: `tokenizer_image_token` turns a prompt with `<image>` placeholders into token ids with
`IMAGE_TOKEN_INDEX` at each placeholder; plus `get_model_name_from_path`,
`KeywordsStoppingCriteria` and image loading.
"""

from __future__ import annotations

import ast
import base64
import binascii
import math
import re
import urllib.request
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

T = TypeVar("T")

# ----------------------------------------------------------------------------- image modes

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """Map a 16/32-bit integer or float grey image to 8-bit 'L' by scaling, not clipping.

    'I;16*' images hold 0..65535. 'I' and 'F' images holding values up to 255 are already 8-bit
    range; larger values are taken as 16-bit range. 'F' images with values in [0, 1] are scaled by 255.
    """
    values = np.asarray(image).astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode in _SIXTEEN_BIT_MODES or peak > 255:
        values = np.clip(values, 0, 65535) / 257.0
    elif image.mode == "F" and peak <= 1.0:
        values = np.clip(values, 0, 1) * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB; transparent parts are composited onto white."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"Expected a PIL image, got {type(image).__name__}; open files with load_image().")
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _to_8bit_gray(image).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("LA" if image.mode == "La" else image.mode).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"Cannot convert an image of PIL mode {image.mode!r} to RGB: {error}") from error


# ----------------------------------------------------------------------------- AnyRes


def select_best_resolution(
    original_size: tuple[int, int], possible_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The (width, height) candidate keeping most of the image's pixels, then wasting the least.

    Each candidate fits the image inside itself keeping the aspect ratio; its effective resolution is
    the fitted area capped at the image's own area, its waste the rest of the candidate's area.
    The first candidate wins exact ties.
    """
    original_width, original_height = original_size
    if original_width <= 0 or original_height <= 0:
        raise ValueError(f"Image size must be positive (width, height), got {original_size}.")
    if not possible_resolutions:
        raise ValueError("No candidate resolutions given: image_grid_pinpoints is empty.")
    best_fit = None
    max_effective = 0
    min_wasted = float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted, best_fit = effective, wasted, (width, height)
    return best_fit


def resize_and_pad_image(image: Image.Image, target_resolution: tuple[int, int]) -> Image.Image:
    """Resize keeping the aspect ratio to fill `target_resolution`, centred on a black canvas."""
    original_width, original_height = image.size
    target_width, target_height = target_resolution
    scale_w = target_width / original_width
    scale_h = target_height / original_height
    if scale_w < scale_h:
        new_width = target_width
        new_height = min(math.ceil(original_height * scale_w), target_height)
    else:
        new_height = target_height
        new_width = min(math.ceil(original_width * scale_h), target_width)
    resized = image.resize((new_width, new_height))  # PIL's default filter (bicubic), as LLaVA-NeXT
    canvas = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    canvas.paste(resized, ((target_width - new_width) // 2, (target_height - new_height) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Square tiles of `patch_size` in raster order (rows top to bottom, left to right)."""
    width, height = image.size
    return [
        image.crop((left, top, left + patch_size, top + patch_size))
        for top in range(0, height, patch_size)
        for left in range(0, width, patch_size)
    ]


def parse_grid_pinpoints(grid_pinpoints: Any, patch_size: int) -> list[tuple[int, int]]:
    """Candidate (width, height) resolutions from a config value.

    Accepts a list of pairs, its string form ("[(336, 672), (672, 336)]"), or LLaVA-NeXT's range
    form "(1x1),...,(3x3)", meaning every grid from 1x1 to 3x3 tiles of `patch_size`.
    """
    if isinstance(grid_pinpoints, str) and "x" in grid_pinpoints:
        matches = re.findall(r"\((\d+)x(\d+)\)", grid_pinpoints)
        if not matches:
            raise ValueError(
                f"Cannot parse image_grid_pinpoints {grid_pinpoints!r}; expected '(1x1),...,(3x3)'."
            )
        (first_w, first_h), (last_w, last_h) = (tuple(map(int, m)) for m in (matches[0], matches[-1]))
        return [
            (cols * patch_size, rows * patch_size)
            for cols in range(first_w, last_w + 1)
            for rows in range(first_h, last_h + 1)
        ]
    if isinstance(grid_pinpoints, str):
        try:
            grid_pinpoints = ast.literal_eval(grid_pinpoints)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"Cannot parse image_grid_pinpoints {grid_pinpoints!r}: {error}") from error
    try:
        resolutions = [(int(width), int(height)) for width, height in grid_pinpoints]
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"image_grid_pinpoints must be a list of (width, height) pairs, got {grid_pinpoints!r}."
        ) from error
    if not resolutions or any(width <= 0 or height <= 0 for width, height in resolutions):
        raise ValueError(f"image_grid_pinpoints must be non-empty positive pairs, got {grid_pinpoints!r}.")
    return resolutions


def get_anyres_image_grid_shape(
    image_size: tuple[int, int], grid_pinpoints: Any, patch_size: int
) -> tuple[int, int]:
    """(columns, rows) of tiles AnyRes cuts an image of `image_size` (width, height) into."""
    width, height = select_best_resolution(image_size, parse_grid_pinpoints(grid_pinpoints, patch_size))
    return width // patch_size, height // patch_size


def _size_entry(size: Any, key: str) -> int:
    """`size[key]` of an image processor, for dicts, transformers' SizeDict or a plain int."""
    if isinstance(size, int):
        return size
    value = size.get(key) if hasattr(size, "get") else None
    if value is None:
        raise ValueError(f"The image processor's size {size!r} has no {key!r} entry, which AnyRes needs.")
    return int(value)


def _is_sized_clip_crop(image: Image.Image, processor: Any) -> bool:
    """True when CLIP's PIL processor would leave `image` as it is until rescaling: an RGB image that
    already has the processor's shortest edge on both sides and its centre-crop size (every AnyRes crop)."""
    if type(processor) is not CLIPImageProcessorPil or image.mode != "RGB" or getattr(processor, "do_pad", False):
        return False
    if not (processor.do_rescale and processor.do_normalize):
        return False
    width, height = image.size
    if processor.do_resize and not (width == height == processor.size.get("shortest_edge")):
        return False
    crop = processor.crop_size
    return not processor.do_center_crop or (crop.get("height"), crop.get("width")) == (height, width)


def _rescaled_and_normalized(image: Image.Image, processor: Any) -> torch.Tensor:
    """The PIL processor's rescale and normalize, in its own dtypes (rescale in float64, stored as
    float32; normalize in float32), so the values are bit-identical, about 4x faster. [3, H, W]"""
    pixels = torch.from_numpy(np.array(image))  # [H, W, 3] uint8
    pixels = (pixels.to(torch.float64) * processor.rescale_factor).to(torch.float32)
    mean = torch.tensor(processor.image_mean, dtype=torch.float32)
    std = torch.tensor(processor.image_std, dtype=torch.float32)
    return ((pixels - mean) / std).permute(2, 0, 1).contiguous()


def _preprocess_one(image: Image.Image, processor: Any) -> torch.Tensor:
    """One image through `processor`, [3, H, W]. Crops CLIP's processor would not resize or crop skip
    its generic path (half the time of a tiny training step went there) for the same values."""
    if _is_sized_clip_crop(image, processor):
        return _rescaled_and_normalized(image, processor)
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


def process_anyres_image(image: Image.Image, processor: Any, grid_pinpoints: Any) -> torch.Tensor:
    """AnyRes crops of one image as a [C, 3, H, W] tensor: the base crop, then the tiles.

    The base crop is the whole image resized (not padded) to the processor's shortest edge, as in
    LLaVA-NeXT; the tiles come from the image resized and padded to the best grid resolution.
    """
    image = to_rgb(image)
    shortest_edge = _size_entry(processor.size, "shortest_edge")
    tile_size = _size_entry(processor.crop_size, "height")
    best_resolution = select_best_resolution(image.size, parse_grid_pinpoints(grid_pinpoints, shortest_edge))
    tiles = divide_to_patches(resize_and_pad_image(image, best_resolution), tile_size)
    base = image.resize((shortest_edge, shortest_edge))
    base_pixels = _preprocess_one(base, processor)  # [3, H, W]
    if len(tiles) == 1 and tiles[0].tobytes() == base.tobytes():
        # A square image on a one-tile grid: the tile is the base, its values are computed once.
        return torch.stack([base_pixels, base_pixels], dim=0)
    return torch.stack([base_pixels, *[_preprocess_one(tile, processor) for tile in tiles]], dim=0)


def expand2square(pil_img: Image.Image, background_color: Any) -> Image.Image:
    """Pad to a square of the longer side with `background_color`, the image centred."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def _stack_if_same_shape(tensors: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    if all(tensor.shape == tensors[0].shape for tensor in tensors):
        return torch.stack(tensors, dim=0)
    return tensors


def process_images(images: Any, image_processor: Any, model_cfg: Any) -> torch.Tensor | list[torch.Tensor]:
    """Pixel values for `images` following `model_cfg.image_aspect_ratio`.

    "anyres": [N, C, 3, H, W] (a list of [C, 3, H, W] when crop counts differ); "pad": padded to a
    square with the processor's mean colour, [N, 3, H, W]; "resize": squashed to a square;
    None / "" / "square": the processor alone (shortest-edge resize and centre crop).
    """
    if isinstance(images, Image.Image):
        images = [images]
    images = [to_rgb(image) for image in images]
    if not images:
        raise ValueError("process_images needs at least one image.")
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect in (None, "", "square"):
        return image_processor.preprocess(images, return_tensors="pt")["pixel_values"]
    if aspect == "anyres":
        pinpoints = getattr(model_cfg, "image_grid_pinpoints", None)
        if not pinpoints:
            raise ValueError("image_aspect_ratio 'anyres' needs image_grid_pinpoints in the model config.")
        return _stack_if_same_shape(
            [process_anyres_image(image, image_processor, pinpoints) for image in images]
        )
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        padded = [expand2square(image, background) for image in images]
        return _stack_if_same_shape([_preprocess_one(image, image_processor) for image in padded])
    if aspect == "resize":
        edge = _size_entry(image_processor.size, "shortest_edge")
        return _stack_if_same_shape(
            [_preprocess_one(image.resize((edge, edge)), image_processor) for image in images]
        )
    raise ValueError(
        f"Unsupported image_aspect_ratio {aspect!r}; use 'anyres', 'pad', 'resize', 'square' or None."
    )


# ----------------------------------------------------------------------------- prompts


def join_image_chunks(chunks: Sequence[Sequence[T]], image_item: T, starts_with_bos: bool) -> list[T]:
    """Join per-chunk token lists (or their labels) with `image_item` between chunks, LLaVA's way.

    Each chunk of a prompt split at `<image>` is tokenized on its own; when the tokenizer adds a
    BOS, every chunk starts with one: the first chunk keeps it, the others drop it.
    """
    joined: list[T] = list(chunks[0]) if chunks else []
    for chunk in chunks[1:]:
        joined.append(image_item)
        joined.extend(chunk[1:] if starts_with_bos else chunk)
    return joined


def chunks_start_with_bos(chunk_ids: Sequence[Sequence[int]], bos_token_id: int | None) -> bool:
    """Whether the tokenizer put a BOS at the start of every chunk (decided by the first, as LLaVA)."""
    starts = bos_token_id is not None and bool(chunk_ids) and chunk_ids[0][:1] == [bos_token_id]
    if starts and any(list(ids[:1]) != [bos_token_id] for ids in chunk_ids[1:]):
        raise ValueError("The tokenizer added a BOS to the first prompt chunk but not to every chunk.")
    return starts


def tokenizer_image_token(
    prompt: str,
    tokenizer: Any,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Token ids of `prompt` with `image_token_index` at each `<image>`, and a single leading BOS.

    `return_tensors="pt"` gives a LongTensor [T]; None gives a list.
    """
    if return_tensors not in (None, "pt"):
        raise ValueError(f"Unsupported return_tensors {return_tensors!r}; use 'pt' or None.")
    chunk_ids = [list(tokenizer(chunk).input_ids) for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    input_ids = join_image_chunks(
        chunk_ids, image_token_index, chunks_start_with_bos(chunk_ids, tokenizer.bos_token_id)
    )
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    return input_ids


def get_model_name_from_path(model_path: str) -> str:
    """The checkpoint's name: its last path part, or "run_checkpoint-N" for a trainer checkpoint."""
    parts = [part for part in str(model_path).strip("/").split("/") if part]
    if not parts:
        raise ValueError(f"Cannot take a model name from an empty path {model_path!r}.")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop each sequence once it generates one of `keywords` (batched; one bool per sequence).

    `input_ids` is the prompt: its length says how many leading positions of the ids passed to
    `__call__` are prompt rather than generated text (pass a [B, 0] tensor when generation
    returns only new tokens, e.g. with `inputs_embeds`).
    """

    def __init__(self, keywords: Sequence[str], tokenizer: Any, input_ids: torch.Tensor):
        keywords = [keywords] if isinstance(keywords, str) else list(keywords)
        if not keywords or any(not keyword for keyword in keywords):
            raise ValueError(f"KeywordsStoppingCriteria needs non-empty keywords, got {keywords!r}.")
        self.keywords = keywords
        self.tokenizer = tokenizer
        self.keyword_ids = [
            torch.tensor(tokenizer(keyword, add_special_tokens=False).input_ids, dtype=torch.long)
            for keyword in keywords
        ]
        self.start_len = input_ids.shape[1]
        self.window = max(3, max(len(ids) for ids in self.keyword_ids) + 1)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for ids in self.keyword_ids:
            if 0 < len(ids) <= input_ids.shape[1]:
                done |= (input_ids[:, -len(ids) :] == ids.to(input_ids.device)).all(dim=1)
        recent = input_ids[:, self.start_len :][:, -self.window :]
        if recent.shape[1] > 0:
            texts = self.tokenizer.batch_decode(recent, skip_special_tokens=True)
            hits = [any(keyword in text for keyword in self.keywords) for text in texts]
            done |= torch.tensor(hits, dtype=torch.bool, device=input_ids.device)
        return done


# ----------------------------------------------------------------------------- loading


class ImageTooLargeError(ValueError):
    """An image with more pixels than PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`)."""


def load_image_from_base64(image: str) -> Image.Image:
    """Decode a base64 string into a PIL image (kept in its own mode, as LLaVA)."""
    try:
        opened = Image.open(BytesIO(base64.b64decode(image)))
        opened.load()
    except (binascii.Error, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot decode a base64 image: {error}") from error
    return opened


def load_image(image_file: str | Path, timeout: float = 30.0) -> Image.Image:
    """Open a local file or an http(s) URL as an RGB image, with clear errors naming the source."""
    source = str(image_file)
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:
                data = BytesIO(response.read())
        except OSError as error:  # urllib's URLError and timeouts are OSErrors
            raise ValueError(f"Cannot download image {source}: {error}") from error
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {path}")
        data = path
    try:
        with Image.open(data) as opened:
            opened.load()
            return to_rgb(opened)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"Image {source} is too large to decode safely: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:  # broken PNG chunks raise SyntaxError
        raise ValueError(f"Cannot read image {source}: {error}") from error
