"""Tests for the tiny offline models: CLIP-L/336 geometry, processor settings, reload and seeding."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.tiny.models import build_tiny_clip, build_tiny_llm, sinusoidal_position_code, tiny_llm_config

WORDS = [
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "what",
    "is",
    "the",
    "color",
    "shape",
    "of",
    "?",
    ".",
    "at",
    "top",
    "left",
    "right",
]


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


def _same_weights(dir_a, dir_b) -> bool:
    a, b = load_file(dir_a / "model.safetensors"), load_file(dir_b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_clip_geometry(clip_dir):
    model = CLIPVisionModel.from_pretrained(clip_dir).eval()
    config = model.config
    assert (config.image_size, config.patch_size, config.hidden_size) == (336, 56, 64)
    assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (3, 2, 128)
    assert config.hidden_act == "quick_gelu"
    assert model.embeddings.position_embedding.weight.shape == (37, 64)  # 6x6 patches + CLS
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert all(h.shape == (2, 37, 64) for h in out.hidden_states)
    assert out.last_hidden_state.shape == (2, 37, 64)
    assert not torch.allclose(out.hidden_states[-2][0], out.hidden_states[-2][1])


def test_tiny_clip_positions_start_as_a_2d_sinusoidal_code(clip_dir):
    positions = CLIPVisionModel.from_pretrained(clip_dir).embeddings.position_embedding.weight.detach()[1:]  # [36, 64]
    code = sinusoidal_position_code(6, 64)
    assert torch.equal(positions, code)
    grid = code.view(6, 6, 64)
    assert torch.equal(grid[2, 0, :32], grid[2, 5, :32]) and torch.equal(grid[0, 3, 32:], grid[5, 3, 32:])  # rows, columns
    assert not torch.equal(grid[0, 0], grid[0, 1]) and not torch.equal(grid[0, 0], grid[1, 0])
    assert torch.allclose(grid[0, 0], torch.tensor([0.0, 1.0]).repeat_interleave(16).repeat(2))  # sin 0, cos 0
    dot = code @ code.T
    assert (dot.diagonal()[:, None] > dot + 1e-4).sum() == 36 * 35  # each patch's code is nearest to itself
    with pytest.raises(ValueError, match="divisible by 4"):
        sinusoidal_position_code(6, 30)


def test_tiny_clip_reloads_identically(clip_dir, tmp_path):
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    outputs = []
    for _ in range(2):
        model = CLIPVisionModel.from_pretrained(clip_dir).eval()
        with torch.no_grad():
            outputs.append(model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2])
    assert torch.equal(outputs[0], outputs[1])
    assert _same_weights(clip_dir, build_tiny_clip(tmp_path / "same", seed=0))
    assert not _same_weights(clip_dir, build_tiny_clip(tmp_path / "other", seed=1))


def test_tiny_clip_processor_reload(clip_dir):
    processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
    assert processor.size == {"shortest_edge": 336}
    assert processor.crop_size == {"height": 336, "width": 336}
    assert processor.resample == 3 and processor.do_center_crop and processor.do_convert_rgb
    color = (200, 100, 50)
    image = Image.new("RGB", (600, 400), color)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 336, 336)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(color, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    torch.testing.assert_close(pixels[0].mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(pixels[0, :, 100, 200], expected, atol=1e-4, rtol=0)
    gray = processor(images=Image.new("L", (336, 700), 128), return_tensors="pt")["pixel_values"]
    assert gray.shape == (1, 3, 336, 336)


def test_tiny_llm_config_and_reload(tokenizer, tmp_path):
    rng_state = torch.get_rng_state()
    out_dir = build_tiny_llm(tmp_path / "llm", tokenizer, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_state)

    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    config = model.config
    assert isinstance(model, LlamaForCausalLM)
    assert config.vocab_size == len(tokenizer)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 128, 4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.max_position_embeddings == 4096 and config.rms_norm_eps == 1e-5
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 3)
    assert not config.tie_word_embeddings
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)

    torch.manual_seed(0)
    reference = LlamaForCausalLM(tiny_llm_config(tokenizer)).eval()
    input_ids = torch.tensor([[1, 4, 5, 8, 10, 2], [1, 6, 7, 9, 11, 12]])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
        expected = reference(input_ids=input_ids).logits
    assert logits.shape == (2, 6, len(tokenizer))
    assert torch.equal(logits, expected)


def test_tiny_llm_tokenizer_reload_and_seeds(tokenizer, tmp_path):
    out_dir = build_tiny_llm(tmp_path / "a", tokenizer, seed=0)
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    text = "what is the color of the circle ?"
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (1, 2, 3)
    assert _same_weights(out_dir, build_tiny_llm(tmp_path / "b", tokenizer, seed=0))
    assert not _same_weights(out_dir, build_tiny_llm(tmp_path / "c", tokenizer, seed=1))


def test_tiny_llm_overrides(tokenizer, tmp_path):
    out_dir = build_tiny_llm(tmp_path / "small", tokenizer, num_hidden_layers=2, hidden_size=32)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 32)
    assert len(model.model.layers) == 2
