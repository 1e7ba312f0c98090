"""The multimodal layout: the one step that turns token ids with image placeholders into a sequence.

`build_multimodal_sequence` replaces every `IMAGE_TOKEN_INDEX` placeholder with its image's crops
(each crop's `g*g` projected patch features in raster order, then one `image_newline` token: the
`flat_newline` layout), or with an `ImageBlock` already merged by one of LLaVA-NeXT's layouts
(`llava.model.image_merge`; its tokens go in as they are and list no crops), drops the caller's
padding, and re-pads the batch to the left (generation) or right (training).
It returns the embedded sequence, the expanded labels, and a `MultimodalLayout` that says where
every segment lives: the kind of each token, its position id, and where each crop starts. The
baseline decoder reads the position ids and the mask; the ProxyV decoder also reads the crops.

Position ids follow docs/design.md §5.4: under the `natural` scheme every token sits at its index
among the sample's real tokens; under the `release` scheme (the authors' released code) the
newline of crop `c >= 1` of an image starting at `p0` sits at `p0 + 577*(c-1) + 576`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace

import torch
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

TOKEN_PAD, TOKEN_TEXT, TOKEN_VISION, TOKEN_NEWLINE = 0, 1, 2, 3
NEWLINE_SCHEMES = ("natural", "release")
PADDING_SIDES = ("left", "right")


@dataclass
class ImageBlock:
    """One image's tokens, already merged by a LLaVA-NeXT layout (`llava.model.image_merge`):
    embeds [n, D] and their kinds [n] (TOKEN_VISION / TOKEN_NEWLINE)."""

    embeds: torch.Tensor
    kinds: torch.Tensor


@dataclass
class MultimodalLayout:
    """Where each segment of an embedded batch lives. All tensors are on the batch's device.

    Crops are listed in batch order (sample, then image, then crop); `N` is their count.
    """

    token_kind: torch.Tensor  # [B, T] TOKEN_PAD / TOKEN_TEXT / TOKEN_VISION / TOKEN_NEWLINE
    position_ids: torch.Tensor  # [B, T] RoPE position of every token (0 on padding)
    attention_mask: torch.Tensor  # [B, T] 1 on real tokens, 0 on padding
    crop_batch: torch.Tensor  # [N] sample of each crop
    crop_start: torch.Tensor  # [N] sequence index of the crop's first vision token
    crop_index: torch.Tensor  # [N] index of the crop within its image (0 = base crop)
    crop_image_start: torch.Tensor  # [N] position id of the first vision token of the crop's image
    tokens_per_crop: int  # g*g (0 when every image came as a merged ImageBlock: no crops listed)
    index_causal: bool  # True when position order equals sequence order on real tokens
    # Structures a decoder derives from the index values above (ProxyV's plan, PyramidDrop's schedule),
    # built once per layout by `derived`; not an init field, so every `replace` starts it afresh.
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def derived(self, key: tuple, build: Callable[["MultimodalLayout"], object]):
        """`build(self)`, computed on the first call for `key` and reused afterwards.

        Decoders read their index-derived structures through this, so a caller that must run the
        decoder where index values do not exist (the FLOP counter on the meta device) builds them on
        CPU first and moves the layout with `to`.
        """
        if key not in self._derived:
            self._derived[key] = build(self)
        return self._derived[key]

    def to(self, device) -> "MultimodalLayout":
        """A copy on `device`, with every derived structure moved along, except one holding a
        FlexAttention block mask: its mask function reads tensors of the old device, so it is
        rebuilt on the new device when a decoder asks for it."""
        moved = replace(self, **_tensor_fields_to(self, device))
        for key, value in self._derived.items():
            if not is_dataclass(value):
                moved._derived[key] = value
            elif not any(isinstance(getattr(value, f.name), BlockMask) for f in fields(value)):
                moved._derived[key] = replace(value, **_tensor_fields_to(value, device))
        return moved

    @property
    def num_crops(self) -> int:
        return int(self.crop_batch.numel())

    def vision_token_index(self) -> torch.Tensor:
        """[N, g*g] sequence index of every full vision token, crop by crop, in raster order."""
        offsets = torch.arange(self.tokens_per_crop, device=self.crop_start.device)
        return self.crop_start[:, None] + offsets[None, :]

    def newline_index(self) -> torch.Tensor:
        """[N] sequence index of every crop's newline token."""
        return self.crop_start + self.tokens_per_crop

    def positions_after(self, num_new: int) -> torch.Tensor:
        """[B, num_new] positions of text appended after the sequence: text always continues at the
        count of real tokens before it (under both newline schemes), so generated tokens do too."""
        start = self.attention_mask.sum(dim=1, keepdim=True)  # [B, 1]
        return start + torch.arange(num_new, device=start.device)

    def with_appended_text(self, num_new: int, attention_mask: torch.Tensor):
        """The layout after `num_new` text tokens were appended on the right (generation)."""
        batch = self.token_kind.shape[0]
        new_kinds = torch.full((batch, num_new), TOKEN_TEXT, dtype=self.token_kind.dtype, device=self.token_kind.device)
        return replace(
            self,
            token_kind=torch.cat([self.token_kind, new_kinds], dim=1),
            position_ids=torch.cat([self.position_ids, self.positions_after(num_new)], dim=1),
            attention_mask=attention_mask,
        )

    def repeat_interleave(self, copies: int):
        """Every sample repeated `copies` times in place (beam search, several return sequences)."""
        if copies == 1:
            return self
        copy_index = torch.arange(copies, device=self.crop_batch.device)
        crop_batch = (self.crop_batch[:, None] * copies + copy_index).flatten()  # [N * copies]
        order = torch.argsort(crop_batch, stable=True)  # crops stay in batch order

        def per_crop(values):  # [N] -> [N * copies], each crop's copies next to each other, then sorted
            return values[:, None].expand(-1, copies).flatten()[order]

        return replace(
            self,
            token_kind=self.token_kind.repeat_interleave(copies, dim=0),
            position_ids=self.position_ids.repeat_interleave(copies, dim=0),
            attention_mask=self.attention_mask.repeat_interleave(copies, dim=0),
            crop_batch=crop_batch[order],
            crop_start=per_crop(self.crop_start),
            crop_index=per_crop(self.crop_index),
            crop_image_start=per_crop(self.crop_image_start),
        )


def _tensor_fields_to(record, device) -> dict:
    """{name: tensor moved to `device`} for every tensor init field of a dataclass `record`."""
    return {f.name: getattr(record, f.name).to(device) for f in fields(record)
            if f.init and isinstance(getattr(record, f.name), torch.Tensor)}


def _image_block_positions(start: int, num_crops: int, tokens_per_crop: int, scheme: str) -> torch.Tensor:
    """Position ids of an image's `C*(g*g+1)` tokens when its first vision token sits at `start`."""
    stride = tokens_per_crop + 1
    positions = torch.arange(start, start + num_crops * stride)
    if scheme == "release" and num_crops > 1:
        # The authors' release places crop c's newline at p0 + stride*(c-1) + g*g for c >= 1.
        crops = torch.arange(1, num_crops)
        positions[crops * stride + tokens_per_crop] = start + (crops - 1) * stride + tokens_per_crop
    return positions


def _image_block_kinds(num_crops: int, tokens_per_crop: int) -> torch.Tensor:
    kinds = torch.full((num_crops, tokens_per_crop + 1), TOKEN_VISION, dtype=torch.long)
    kinds[:, -1] = TOKEN_NEWLINE
    return kinds.flatten()


def _check_inputs(input_ids, attention_mask, image_features, padding_side, newline_scheme):
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got '{padding_side}'.")
    if newline_scheme not in NEWLINE_SCHEMES:
        raise ValueError(f"image_newline_positions must be one of {NEWLINE_SCHEMES}, got '{newline_scheme}'.")
    is_placeholder = input_ids == IMAGE_TOKEN_INDEX
    if bool((is_placeholder & ~attention_mask.bool()).any()):
        raise ValueError(
            f"An image placeholder (token {IMAGE_TOKEN_INDEX}) sits under attention_mask == 0; placeholders "
            "must be real tokens. Check how the prompts were padded."
        )
    num_placeholders = int(is_placeholder.sum())
    if num_placeholders != len(image_features):
        raise ValueError(
            f"The batch has {num_placeholders} image placeholder(s) (token {IMAGE_TOKEN_INDEX}) but "
            f"{len(image_features)} image(s) were given; pass one image per '<image>' in the prompt."
        )
    sizes = {tuple(f.shape[1:]) for f in image_features if isinstance(f, torch.Tensor)}
    if len(sizes) > 1:
        raise ValueError(f"All images must give features of one shape [g*g, d]; got {sorted(sizes)}.")


def build_multimodal_sequence(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    image_features: list[torch.Tensor],
    embed_tokens: nn.Embedding,
    image_newline: torch.Tensor,
    padding_side: str = "right",
    newline_scheme: str = "natural",
) -> tuple[torch.Tensor, torch.Tensor | None, MultimodalLayout]:
    """Expand image placeholders into crops and return `(inputs_embeds, labels, layout)`.

    input_ids: [B, L] with `IMAGE_TOKEN_INDEX` placeholders, any padding marked by attention_mask.
    image_features: one tensor [C_i, g*g, D] per placeholder, in batch order; or, for LLaVA-NeXT's
        layouts, an `ImageBlock` already merged by `llava.model.image_merge` (its tokens go in as
        they are, at natural positions, and list no crops).
    image_newline: [D] learned token appended after every crop (None when only blocks are given).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _check_inputs(input_ids, attention_mask, image_features, padding_side, newline_scheme)
    device = input_ids.device
    keep = attention_mask.bool()
    # Embed all text at once; placeholders get a dummy id and are replaced below.
    text_embeds = embed_tokens(input_ids.masked_fill(input_ids == IMAGE_TOKEN_INDEX, 0))  # [B, L, D]
    crop_features = [f for f in image_features if isinstance(f, torch.Tensor)]
    tokens_per_crop = crop_features[0].shape[1] if crop_features else 0

    samples, crops = [], []
    image_iter = iter(image_features)
    for b in range(input_ids.shape[0]):
        sample, sample_crops = _expand_sample(
            input_ids[b][keep[b]],
            text_embeds[b][keep[b]],
            None if labels is None else labels[b][keep[b]],
            image_iter,
            image_newline,
            tokens_per_crop,
            newline_scheme,
        )
        samples.append(sample)
        crops.append(sample_crops)
    return _pad_batch(samples, crops, tokens_per_crop, padding_side, newline_scheme, device, labels is not None)


def _expand_sample(ids, embeds, labels, image_iter, image_newline, tokens_per_crop, scheme):
    """One sample's pieces: embeds [T, D], kinds [T], positions [T], labels [T]; and its crops."""
    pieces = {"embeds": [], "kinds": [], "positions": [], "labels": []}
    crops = []  # (sample-relative start, crop index, image start position)
    image_slots = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    cursor, prev = 0, 0
    for slot in [*image_slots, len(ids)]:
        num_text = slot - prev
        pieces["embeds"].append(embeds[prev:slot])
        pieces["kinds"].append(torch.full((num_text,), TOKEN_TEXT, dtype=torch.long))
        pieces["positions"].append(torch.arange(cursor, cursor + num_text))
        if labels is not None:
            pieces["labels"].append(labels[prev:slot])
        cursor += num_text
        prev = slot + 1
        if slot == len(ids):
            break
        features = next(image_iter)  # [C, g*g, D], or an ImageBlock
        if isinstance(features, ImageBlock):  # merged by a LLaVA-NeXT layout: no crops to list
            size = features.embeds.shape[0]
            pieces["embeds"].append(features.embeds.to(embeds.dtype))
            pieces["kinds"].append(features.kinds)
            pieces["positions"].append(torch.arange(cursor, cursor + size))
            if labels is not None:
                pieces["labels"].append(torch.full((size,), IGNORE_INDEX, dtype=labels.dtype, device=labels.device))
            cursor += size
            continue
        num_crops, _, dim = features.shape
        newline = image_newline.to(features.dtype).expand(num_crops, 1, dim)
        block = torch.cat([features, newline], dim=1).reshape(-1, dim)  # [C*(g*g+1), D]
        pieces["embeds"].append(block.to(embeds.dtype))
        pieces["kinds"].append(_image_block_kinds(num_crops, tokens_per_crop))
        pieces["positions"].append(_image_block_positions(cursor, num_crops, tokens_per_crop, scheme))
        if labels is not None:
            pieces["labels"].append(torch.full((block.shape[0],), IGNORE_INDEX, dtype=labels.dtype, device=labels.device))
        crops += [(cursor + c * (tokens_per_crop + 1), c, cursor) for c in range(num_crops)]
        cursor += block.shape[0]
    sample = {key: torch.cat(value) for key, value in pieces.items() if value}
    return sample, crops


def _pad_batch(samples, crops, tokens_per_crop, padding_side, scheme, device, has_labels):
    batch, length = len(samples), max(s["embeds"].shape[0] for s in samples)
    dim, dtype = samples[0]["embeds"].shape[1], samples[0]["embeds"].dtype
    inputs_embeds = torch.zeros(batch, length, dim, dtype=dtype, device=device)
    token_kind = torch.full((batch, length), TOKEN_PAD, dtype=torch.long, device=device)
    position_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=device) if has_labels else None
    crop_rows = []
    any_multi_crop = False
    for b, sample in enumerate(samples):
        size = sample["embeds"].shape[0]
        offset = length - size if padding_side == "left" else 0
        span = slice(offset, offset + size)
        inputs_embeds[b, span] = sample["embeds"]
        token_kind[b, span] = sample["kinds"].to(device)
        position_ids[b, span] = sample["positions"].to(device)
        if has_labels:
            labels[b, span] = sample["labels"].to(device)
        crop_rows += [(b, start + offset, index, image_start) for start, index, image_start in crops[b]]
        any_multi_crop |= any(index > 0 for _, index, _ in crops[b])
    crop_table = torch.tensor(crop_rows, dtype=torch.long, device=device).reshape(-1, 4)
    layout = MultimodalLayout(
        token_kind=token_kind,
        position_ids=position_ids,
        attention_mask=(token_kind != TOKEN_PAD).long(),
        crop_batch=crop_table[:, 0],
        crop_start=crop_table[:, 1],
        crop_index=crop_table[:, 2],
        crop_image_start=crop_table[:, 3],
        tokens_per_crop=tokens_per_crop,
        index_causal=scheme == "natural" or not any_multi_crop,
    )
    return inputs_embeds, labels, layout
