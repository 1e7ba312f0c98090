"""The one backend policy (`llava.model.backends`): which configs need arbitrary masks, what masked
layers call under each `attn_implementation`, and the family-neutral eager attention."""

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from llava.model import backends
from llava.model.backends import (
    eager_attention,
    mask_limits_flash,
    masked_attention_interface,
    require_masks_supported,
)


def _config(attn="sdpa", **values):
    config = SimpleNamespace(**values)
    config._attn_implementation = attn
    return config


@pytest.mark.parametrize("values, needs_masks", [
    ({"image_newline_positions": "natural"}, False),
    ({"image_newline_positions": "release"}, True),
    ({"pyramid_drop_layers": [1, 2]}, True),
    ({"proxyv_variant": "mask_vision_attention"}, True),
    ({"proxyv_variant": "proxyv"}, False),
])
def test_mask_limits_flash_names_the_reason(values, needs_masks):
    assert (mask_limits_flash(_config(**values)) is not None) is needs_masks


def test_flash_is_refused_for_a_model_built_directly_with_arbitrary_masks():
    with pytest.raises(ValueError, match="release newline positions.*sdpa"):
        require_masks_supported(_config("flash_attention_2", image_newline_positions="release"))
    require_masks_supported(_config("sdpa", image_newline_positions="release"))  # fine


def test_masked_layers_use_flex_under_flash_and_say_so_once(monkeypatch, caplog):
    monkeypatch.setattr(backends, "_said_masked_backend_for_flash", False)
    with caplog.at_level(logging.WARNING, logger="llava.model.backends"):
        first = masked_attention_interface(_config("flash_attention_2"))
        second = masked_attention_interface(_config("flash_attention_2"))
    assert first is second is ALL_ATTENTION_FUNCTIONS["flex_attention"]
    assert sum("use flex_attention" in record.getMessage() for record in caplog.records) == 1
    assert masked_attention_interface(_config("eager")) is eager_attention
    assert masked_attention_interface(_config("sdpa")) is ALL_ATTENTION_FUNCTIONS["sdpa"]
    assert masked_attention_interface(_config("flex_attention")) is ALL_ATTENTION_FUNCTIONS["flex_attention"]


def test_eager_attention_equals_sdpa_with_grouped_heads_and_a_mask():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 5, 8, generator=generator)  # [B, H, Q, hd]
    key, value = torch.randn(2, 2, 7, 8, generator=generator), torch.randn(2, 2, 7, 8, generator=generator)
    visible = torch.rand(2, 1, 5, 7, generator=generator) > 0.3
    visible[..., 0] = True
    mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    module.is_causal = False
    ours, _ = eager_attention(module, query, key, value, mask, scaling=8**-0.5)
    theirs, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, mask, scaling=8**-0.5)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
