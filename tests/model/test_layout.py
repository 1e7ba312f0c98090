"""`build_multimodal_sequence` against a token-by-token reference written here in plain Python.

The reference walks each sample's real tokens one at a time: a text token gives its embedding, its
label and the next position; an image placeholder gives, per crop, the crop's g*g features in raster
order (label IGNORE) and then the newline token. Positions follow docs/design.md §5.4 (natural: the
token's index; release: the newline of crop c >= 1 at p0 + (g*g+1)*(c-1) + g*g). Crops are real
576-token crops with a small feature width so the check is exact yet fast.
"""

import pytest
import torch
from torch import nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.layout import (
    TOKEN_NEWLINE,
    TOKEN_PAD,
    TOKEN_TEXT,
    TOKEN_VISION,
    build_multimodal_sequence,
)

G2 = 576  # tokens per crop: the real 24x24 grid
DIM = 8
PAD = 0
VOCAB = 40


def make_batch(input_padding: str):
    """Three samples: (a) one 3-crop image mid-text, (b) two images (1 and 5 crops), (c) text only.

    Returns token lists, label lists, crop counts (in batch order), and the padded
    (input_ids, attention_mask, labels) tensors; padding labels are junk on purpose.
    """
    img = IMAGE_TOKEN_INDEX
    tokens = [
        [1, 5, 6, img, 7, 8, 9],
        [1, img, 10, 11, img],
        [1, 12, 13, 14, 15, 16, 17, 18, 19, 20],
    ]
    labels = [
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, img, 7, 8, 9],
        [IGNORE_INDEX, IGNORE_INDEX, 10, 11, IGNORE_INDEX],
        [IGNORE_INDEX, 12, 13, 14, 15, IGNORE_INDEX, 17, 18, 19, 20],
    ]
    crop_counts = [3, 1, 5]
    length = max(len(t) for t in tokens) + 2  # every sample has some padding
    ids = torch.full((3, length), PAD, dtype=torch.long)
    mask = torch.zeros(3, length, dtype=torch.long)
    lab = torch.full((3, length), 33, dtype=torch.long)  # junk: must not survive on padding
    for b, (t, lb) in enumerate(zip(tokens, labels)):
        span = slice(length - len(t), length) if input_padding == "left" else slice(0, len(t))
        ids[b, span] = torch.tensor(t)
        mask[b, span] = 1
        lab[b, span] = torch.tensor(lb)
    return tokens, labels, crop_counts, ids, mask, lab


def make_features(crop_counts, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(c, G2, DIM, generator=generator) for c in crop_counts]


def make_embedding(seed=1):
    torch.manual_seed(seed)
    embed = nn.Embedding(VOCAB, DIM)
    newline = torch.randn(DIM)
    return embed, newline


def reference_sample(tokens, labels, features_iter, embed, newline, scheme):
    """Token-by-token expansion of one unpadded sample.

    Returns dict with lists: embeds (tensors [D]), kinds, positions, labels, and crops as
    (sequence index of first vision token, crop index, image start position).
    """
    out = {"embeds": [], "kinds": [], "positions": [], "labels": [], "crops": [], "newlines": []}
    position = 0
    for token, label in zip(tokens, labels):
        if token != IMAGE_TOKEN_INDEX:
            out["embeds"].append(embed.weight[token])
            out["kinds"].append(TOKEN_TEXT)
            out["positions"].append(position)
            out["labels"].append(label)
            position += 1
            continue
        feats = next(features_iter)
        p0 = position
        for c in range(feats.shape[0]):
            out["crops"].append((len(out["embeds"]), c, p0))
            for k in range(G2):
                out["embeds"].append(feats[c, k])
                out["kinds"].append(TOKEN_VISION)
                out["positions"].append(position)
                out["labels"].append(IGNORE_INDEX)
                position += 1
            out["newlines"].append(len(out["embeds"]))
            out["embeds"].append(newline)
            out["kinds"].append(TOKEN_NEWLINE)
            if scheme == "natural" or c == 0:
                out["positions"].append(p0 + 577 * c + 576)
            else:
                out["positions"].append(p0 + 577 * (c - 1) + 576)
            out["labels"].append(IGNORE_INDEX)
            position += 1
    return out


def reference_batch(tokens, labels, features, embed, newline, scheme, padding_side):
    it = iter(features)
    samples = [reference_sample(t, lb, it, embed, newline, scheme) for t, lb in zip(tokens, labels)]
    length = max(len(s["embeds"]) for s in samples)
    batch = len(samples)
    ref = {
        "embeds": torch.zeros(batch, length, DIM),
        "kinds": torch.full((batch, length), TOKEN_PAD),
        "positions": torch.zeros(batch, length, dtype=torch.long),
        "labels": torch.full((batch, length), IGNORE_INDEX),
        "mask": torch.zeros(batch, length, dtype=torch.long),
        "crop_batch": [],
        "crop_start": [],
        "crop_index": [],
        "crop_image_start": [],
        "newline_index": [],
        "offsets": [],
    }
    for b, s in enumerate(samples):
        n = len(s["embeds"])
        offset = length - n if padding_side == "left" else 0
        ref["offsets"].append(offset)
        for i in range(n):
            ref["embeds"][b, offset + i] = s["embeds"][i]
            ref["kinds"][b, offset + i] = s["kinds"][i]
            ref["positions"][b, offset + i] = s["positions"][i]
            ref["labels"][b, offset + i] = s["labels"][i]
            ref["mask"][b, offset + i] = 1
        for start, index, image_start in s["crops"]:
            ref["crop_batch"].append(b)
            ref["crop_start"].append(offset + start)
            ref["crop_index"].append(index)
            ref["crop_image_start"].append(image_start)
        ref["newline_index"] += [offset + i for i in s["newlines"]]
    return ref


@pytest.mark.parametrize("scheme", ["natural", "release"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("input_padding", ["right", "left"])
def test_layout_matches_reference(scheme, padding_side, input_padding):
    tokens, labels, crop_counts, ids, mask, lab = make_batch(input_padding)
    features = make_features(crop_counts)
    embed, newline = make_embedding()
    with torch.no_grad():
        embeds, out_labels, layout = build_multimodal_sequence(
            ids, mask, lab, features, embed, newline, padding_side=padding_side, newline_scheme=scheme
        )
        ref = reference_batch(tokens, labels, features, embed, newline, scheme, padding_side)

    # Sizes: text + 577 per crop; the longest sample fills the batch.
    lengths = [7 - 1 + 3 * 577, 5 - 2 + 6 * 577, 10]
    assert embeds.shape == (3, max(lengths), DIM)
    assert ref["mask"].sum(1).tolist() == lengths

    real = ref["mask"].bool()
    torch.testing.assert_close(embeds[real], ref["embeds"][real], rtol=0, atol=0)
    assert torch.equal(layout.token_kind, ref["kinds"])
    assert torch.equal(layout.attention_mask, ref["mask"])
    assert torch.equal(out_labels, ref["labels"])
    assert torch.equal(layout.position_ids[real], ref["positions"][real])
    assert torch.equal(layout.position_ids[~real], torch.zeros_like(layout.position_ids[~real]))

    # Positions start at 0 on the first real token whatever the padding side.
    for b, offset in enumerate(ref["offsets"]):
        assert int(layout.position_ids[b, offset]) == 0
        assert int(layout.token_kind[b, offset]) == TOKEN_TEXT
    if padding_side == "left":
        assert bool(layout.attention_mask[:, -1].all())  # real tokens end the sequence
    else:
        assert bool(layout.attention_mask[:, 0].all())

    assert layout.tokens_per_crop == G2
    assert layout.num_crops == 9
    assert layout.crop_batch.tolist() == ref["crop_batch"]
    assert layout.crop_start.tolist() == ref["crop_start"]
    assert layout.crop_index.tolist() == ref["crop_index"]
    assert layout.crop_image_start.tolist() == ref["crop_image_start"]
    assert layout.newline_index().tolist() == ref["newline_index"]

    # vision_token_index gathers every crop's features in raster order.
    index = layout.vision_token_index()
    assert index.shape == (9, G2)
    all_crops = torch.cat(features)  # [9, G2, D] in batch order
    gathered = embeds[layout.crop_batch[:, None], index]
    torch.testing.assert_close(gathered, all_crops, rtol=0, atol=0)
    assert bool((layout.token_kind[layout.crop_batch[:, None], index] == TOKEN_VISION).all())
    assert bool((layout.token_kind[layout.crop_batch, layout.newline_index()] == TOKEN_NEWLINE).all())

    assert layout.index_causal == (scheme == "natural")


def test_release_positions_explicit_values():
    """One 3-crop image after two text tokens: the newline positions of docs/design.md §5.4."""
    embed, newline = make_embedding()
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6]])
    features = make_features([3])
    _, _, natural = build_multimodal_sequence(
        ids, None, None, features, embed, newline, newline_scheme="natural"
    )
    _, _, release = build_multimodal_sequence(
        ids, None, None, features, embed, newline, newline_scheme="release"
    )
    p0 = 2
    newline_rows = natural.newline_index()
    assert natural.position_ids[0, newline_rows].tolist() == [p0 + 576, p0 + 577 + 576, p0 + 2 * 577 + 576]
    assert release.position_ids[0, newline_rows].tolist() == [p0 + 576, p0 + 576, p0 + 577 + 576]
    # Vision tokens and the text after the image are the same in both schemes.
    not_newline = natural.token_kind != TOKEN_NEWLINE
    assert torch.equal(natural.position_ids[not_newline], release.position_ids[not_newline])
    assert int(release.position_ids[0, -1]) == p0 + 3 * 577
    assert natural.index_causal and not release.index_causal


def test_release_with_single_crop_images_is_index_causal():
    embed, newline = make_embedding()
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, IMAGE_TOKEN_INDEX], [1, 2, 3, 4]])
    _, _, layout = build_multimodal_sequence(
        ids, None, None, make_features([1, 1]), embed, newline, newline_scheme="release"
    )
    assert layout.index_causal
    assert torch.equal(layout.position_ids[0], torch.arange(layout.position_ids.shape[1]))


def test_text_only_batch():
    embed, newline = make_embedding()
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    for scheme in ("natural", "release"):
        embeds, labels, layout = build_multimodal_sequence(
            ids, mask, ids.clone(), [], embed, newline, padding_side="left", newline_scheme=scheme
        )
        assert layout.num_crops == 0 and layout.index_causal
        assert layout.vision_token_index().shape[0] == 0
        assert layout.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
        assert layout.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
        assert labels.tolist() == [[1, 5, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 1, 8]]
        torch.testing.assert_close(embeds[1, 2:], embed.weight[[1, 8]].detach(), rtol=0, atol=0)


def test_labels_none_and_mask_none():
    embed, newline = make_embedding()
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5]])
    embeds, labels, layout = build_multimodal_sequence(ids, None, None, make_features([2]), embed, newline)
    assert labels is None
    assert embeds.shape == (1, 2 + 2 * 577, DIM)
    assert bool(layout.attention_mask.all())


def test_with_appended_text():
    embed, newline = make_embedding()
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5]])
    _, _, layout = build_multimodal_sequence(ids, None, None, make_features([2]), embed, newline)
    length = layout.token_kind.shape[1]
    mask = torch.ones(1, length + 2, dtype=torch.long)
    grown = layout.with_appended_text(2, mask)
    assert grown.token_kind.shape == (1, length + 2)
    assert grown.token_kind[0, -2:].tolist() == [TOKEN_TEXT, TOKEN_TEXT]
    assert torch.equal(grown.crop_start, layout.crop_start)
    assert grown.position_ids[0, -2:].tolist() == [length, length + 1]
    assert grown.attention_mask is mask


def test_derived_structures_are_built_once_and_travel_with_the_layout():
    """A decoder's index-derived structure (ProxyV's plan) is built once per layout, moves with
    `to(device)`, and is not carried into a changed layout (appended text, repeated samples)."""
    from llava.model.proxyv.plan import build_proxyv_plan

    embed, newline = make_embedding()
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5]])
    _, _, layout = build_multimodal_sequence(ids, None, None, make_features([2]), embed, newline)
    calls = []

    def build(lay):
        calls.append(lay)
        return build_proxyv_plan(lay, 4, torch.float32)

    plan = layout.derived(("plan", 4), build)
    assert layout.derived(("plan", 4), build) is plan and calls == [layout]
    on_meta = layout.to("meta")
    meta_plan = on_meta.derived(("plan", 4), build)
    assert len(calls) == 1 and meta_plan.full_token.is_meta and on_meta.position_ids.is_meta
    assert meta_plan.num_light_slots == plan.num_light_slots and meta_plan.attention_mask.shape == plan.attention_mask.shape
    grown = layout.with_appended_text(1, torch.ones(1, layout.token_kind.shape[1] + 1, dtype=torch.long))
    assert grown.derived(("plan", 4), build).attention_mask.shape[-1] == plan.attention_mask.shape[-1] + 1
    assert layout.repeat_interleave(2).derived(("plan", 4), build).full_token.shape[0] == 2 * plan.full_token.shape[0]
    assert len(calls) == 3
    # A plan holding a flex block mask is not moved (its mask function reads the old device's tensors).
    layout.derived(("flex plan", 4), lambda lay: build_proxyv_plan(lay, 4, torch.float32, "flex_attention"))
    moved = layout.to("cpu")
    assert ("plan", 4) in moved._derived and ("flex plan", 4) not in moved._derived


@pytest.mark.parametrize("scheme", ["natural", "release"])
def test_positions_after_a_final_multi_crop_image(scheme):
    """Text after an image continues at p0 + (g*g+1)*C under both schemes, even when nothing
    follows the image in the prompt (the release scheme's last newline sits earlier)."""
    embed, newline = make_embedding()
    ids = torch.tensor([[1, 7, IMAGE_TOKEN_INDEX]])
    _, _, layout = build_multimodal_sequence(ids, None, None, make_features([3]), embed, newline, newline_scheme=scheme)
    tokens_per_crop = layout.tokens_per_crop
    assert layout.positions_after(2)[0].tolist() == [2 + 3 * (tokens_per_crop + 1) + k for k in range(2)]


@pytest.mark.parametrize("num_images", [1, 3])
def test_placeholder_image_mismatch_raises(num_images):
    embed, newline = make_embedding()
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5], [1, IMAGE_TOKEN_INDEX, 6]])
    with pytest.raises(ValueError, match=rf"2 image placeholder.*{num_images} image") as info:
        build_multimodal_sequence(ids, None, None, make_features([1] * num_images), embed, newline)
    assert "<image>" in str(info.value)


def test_placeholder_on_padding_still_counts():
    """A placeholder hidden under the attention mask is not silently dropped with its image."""
    embed, newline = make_embedding()
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX]])
    mask = torch.tensor([[1, 1, 0]])
    with pytest.raises(ValueError):
        build_multimodal_sequence(ids, mask, None, [], embed, newline)


def test_features_of_different_shapes_raise():
    embed, newline = make_embedding()
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX]])
    features = [torch.randn(1, G2, DIM), torch.randn(1, 16, DIM)]
    with pytest.raises(ValueError, match="shape"):
        build_multimodal_sequence(ids, None, None, features, embed, newline)


def test_bad_padding_side_and_scheme_raise():
    embed, newline = make_embedding()
    ids = torch.tensor([[1, 5]])
    with pytest.raises(ValueError, match="padding_side.*middle"):
        build_multimodal_sequence(ids, None, None, [], embed, newline, padding_side="middle")
    with pytest.raises(ValueError, match="natural.*release|release.*natural"):
        build_multimodal_sequence(ids, None, None, [], embed, newline, newline_scheme="shifted")


def test_placeholder_on_padding_does_not_shift_images():
    """Sample 0's placeholder is masked out; sample 1 must still get image B (or the call must raise)."""
    embed, newline = make_embedding()
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX], [1, IMAGE_TOKEN_INDEX, 6]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    image_a, image_b = torch.full((1, G2, DIM), 1.0), torch.full((2, G2, DIM), 2.0)
    try:
        embeds, _, layout = build_multimodal_sequence(ids, mask, None, [image_a, image_b], embed, newline)
    except ValueError:
        return
    assert layout.crop_batch.tolist() == [1, 1]
    torch.testing.assert_close(embeds[1, 1 : 1 + G2], image_b[0])
