"""Which image layout a config means (`mm_patch_merge_type`), LLaVA-NeXT's layouts counted without
building them, and the clear refusals: ProxyV / VisionZip / PyramidDrop on a LLaVA-NeXT layout,
LLaVA-OneVision's `anyres_max_N`, merge types and towers we do not implement, training on them.
The layouts' outputs themselves are checked against LLaVA-NeXT's code in test_golden_llava_next.py."""

import json
import random

import pytest
import torch

from llava.model import FAMILIES
from llava.model.image_merge import image_token_counts, merge_image, merge_type_of_saved_config
from llava.model.layout import TOKEN_NEWLINE
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from tests.proxyv_fixtures import tiny_proxyv_config

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@pytest.mark.parametrize(("values", "expected"), [
    ({"mm_patch_merge_type": "spatial_unpad"}, "spatial_unpad"),  # LLaVA-1.6's config
    ({"mm_patch_merge_type": "spatial"}, "spatial"),
    ({}, "flat"),  # LLaVA-1.5's config has no key: LLaVA's default
    ({"mm_patch_merge_type": "spatial_unpad", "image_newline_positions": "natural"}, "flat_newline"),  # our older saves
    ({"mm_patch_merge_type": "spatial_unpad", "proxyv": True}, "flat_newline"),  # the authors' release
    ({"mm_patch_merge_type": "spatial_unpad", "proxyv": None}, "spatial_unpad"),  # a baseline save with proxyv: null
    ({"mm_patch_merge_type": "flat_newline"}, "flat_newline"),  # ours from now on
])
def test_the_layout_a_saved_config_means(values, expected):
    assert merge_type_of_saved_config({"mm_vision_tower": "openai/clip-vit-large-patch14-336", **values}) == expected


def test_a_plain_llm_config_read_into_a_proxyv_class_keeps_our_layout(tiny_assets):
    """PEFT reads the base LLM's config.json with the model's own config class when it saves."""
    config = FAMILIES["llama"].proxyv_config.from_pretrained(tiny_assets.llm)
    assert config.mm_patch_merge_type == "flat_newline"


def test_configs_read_and_write_their_layout(tmp_path):
    llama = FAMILIES["llama"].config
    assert llama().mm_patch_merge_type == "flat_newline"  # built in code: ours
    old = llama().to_dict() | {"mm_patch_merge_type": "spatial_unpad"}  # what our earlier saves wrote
    assert llama.from_dict(old).mm_patch_merge_type == "flat_newline"
    official = {key: value for key, value in old.items() if key not in ("image_newline_positions", "proxyv")}
    assert llama.from_dict(official).mm_patch_merge_type == "spatial_unpad"
    next_config = llama.from_dict(official)
    next_config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mm_patch_merge_type"] == "spatial_unpad" and "image_newline_positions" not in saved
    assert "image_newline_positions" in llama().to_dict()


@pytest.mark.parametrize(("options", "message"), [
    ({"mm_patch_merge_type": "spatial_unpad"}, "ProxyV run on the 'flat_newline' layout"),
    ({"mm_patch_merge_type": "spatial_unpad_maxpool2x2"}, "Unknown mm_patch_merge_type 'spatial_unpad_maxpool2x2'"),
    ({"image_aspect_ratio": "anyres_max_9"}, "anyres_max_9' \\(LLaVA-OneVision's capped AnyRes\\) is not supported"),
])
def test_proxyv_and_unknown_layouts_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        tiny_proxyv_config(**options)


def test_token_reduction_on_a_llava_next_layout_is_refused():
    with pytest.raises(ValueError, match="PyramidDrop run on the 'flat_newline' layout"):
        FAMILIES["llama"].config(mm_patch_merge_type="spatial", pyramid_drop_layers=[1], num_hidden_layers=2)
    with pytest.raises(ValueError, match="VisionZip run on"):
        FAMILIES["llama"].config(mm_patch_merge_type="flat", vision_token_reduction="visionzip")


def test_a_siglip_tower_is_refused_naming_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model", "hidden_size": 32}))
    with pytest.raises(ValueError, match=f"mm_vision_tower {tmp_path} is a 'siglip_vision_model' vision tower"):
        CLIPVisionTower(str(tmp_path))
    with pytest.raises(ValueError, match="'siglip_vision_model' vision tower"):
        CLIPVisionTower("google/siglip-so400m-patch14-384", vision_config={"model_type": "siglip_vision_model"})
    with pytest.raises(ValueError, match="a 'clip' vision tower"):  # a whole CLIP model's config, inlined
        CLIPVisionTower("openai/clip-vit-large-patch14-336", vision_config={"model_type": "clip"})


@pytest.mark.parametrize("merge_type", ["flat", "spatial", "spatial_unpad"])
def test_counts_equal_the_merged_blocks(merge_type):
    """`image_token_counts` (used for context checks and the web report) equals what `merge_image`
    builds, for random image sizes, under every LLaVA-NeXT layout."""
    config = FAMILIES["llama"].config(mm_patch_merge_type=merge_type, image_aspect_ratio="anyres",
                                      image_grid_pinpoints=PINPOINTS, hidden_size=8, num_attention_heads=2,
                                      num_key_value_heads=2)
    rng, side = random.Random(7), 24
    newline = torch.randn(8)
    for _ in range(40):
        size = (rng.randint(50, 2000), rng.randint(50, 2000))
        from llava.mm_utils import get_anyres_image_grid_shape

        cols, rows = get_anyres_image_grid_shape(size, PINPOINTS, 336)
        features = torch.randn(1 + rows * cols, side * side, 8)
        block = merge_image(features, config, size, newline, 336)
        vision, newlines = image_token_counts(config, 1 + rows * cols, side * side, size, 336)
        assert block.embeds.shape[0] == vision + newlines and int((block.kinds == TOKEN_NEWLINE).sum()) == newlines
        if merge_type == "spatial_unpad":  # every newline row holds the learned token
            assert torch.equal(block.embeds[block.kinds == TOKEN_NEWLINE], newline.expand(newlines, 8))


def test_training_refuses_a_llava_next_layout_flag():
    from llava.errors import UsageError
    from llava.train.arguments import ModelArguments

    with pytest.raises(UsageError, match="--mm_patch_merge_type spatial_unpad: training builds the 'flat_newline'"):
        ModelArguments(model_name_or_path="lmsys/vicuna-7b-v1.5", mm_patch_merge_type="spatial_unpad")


def test_unpad_counts_without_an_image_size_are_a_clear_error():
    config = FAMILIES["llama"].config(mm_patch_merge_type="spatial_unpad", image_grid_pinpoints=PINPOINTS)
    with pytest.raises(ValueError, match="needs each image's size: pass image_sizes"):
        image_token_counts(config, 3, 576, None, 336)
    with pytest.raises(ValueError, match="gives 1x2 AnyRes tiles, but 3 tile crops were passed"):
        image_token_counts(config, 4, 576, (700, 350), 336)
