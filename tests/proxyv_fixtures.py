"""Tiny ProxyV models, batches and checkpoint writers for the ProxyV tests.

Everything is built in-process and offline. Crops are small by default: a tiny CLIP with
`image_size` 56 and patch 14 gives a 4x4 grid (g = 4, `per_crop_token_len` 16); with
`proxyv_reduce_factor` 2 a crop has a 2x2 proxy grid (n = 4).

Helpers:
* `tiny_proxyv_config(proxyv_start_layer=2, learn_proxy=False, family="llama", **overrides)` -> the
  family's ProxyV config (`llava.tiny.models.TINY_FAMILY_OVERRIDES`: what each family needs beyond the shape).
* `tiny_proxyv_model(seed=0, attn_implementation="eager", **config_overrides)` -> fp32 model in eval mode.
* `baseline_twin(model, attn_implementation)` -> the family's baseline causal LM with the same weights.
* `copy_with_attn(model, attn_implementation)` -> the same ProxyV model under another backend.
* `random_crops(crop_counts, seed, image_size)` -> one [C, 3, S, S] tensor per image.
* `MIXED_SAMPLES` / `MIXED_CROPS`: a 3-crop image; two images (1 and 2 crops); text only.
* `pad_batch(samples, side)` -> `(input_ids, attention_mask)`.
* `tiny_word_tokenizer()`, `save_clip_folder(path, seed, image_size)`: what a checkpoint folder needs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import FAMILIES, family_for_model_type
from llava.model.language_model.proxyv_decoder import PROXYV_CONFIG_KEYS
from llava.tiny.models import TINY_FAMILY_OVERRIDES

PAD_ID = 0
VOCAB_SIZE = 64
IMAGE_SIZE = 56  # 56 / 14 = 4: a 4x4 grid per crop
TOKENS_PER_CROP = 16
NUM_LAYERS = 4

PROXYV_KEYS = PROXYV_CONFIG_KEYS

TINY_CLIP = {
    "image_size": IMAGE_SIZE,
    "patch_size": 14,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}

IMG = IMAGE_TOKEN_INDEX
# A right-padded training-style batch: (a) one 3-crop image mid-text, (b) two images with 1 and 2
# crops, (c) text only, (d) a 1-crop image right after BOS and the longest text (so samples have
# 3, 3, 0 and 1 crops: unused proxy slots). Crop counts are listed per image in batch order.
MIXED_SAMPLES = [
    [1, 5, 6, IMG, 7, 8, 9],
    [1, IMG, 10, 11, IMG, 12],
    [1, 13, 14, 15, 16, 17, 18, 19, 20],
    [1, IMG, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32],
]
MIXED_CROPS = [3, 1, 2, 1]


def tiny_clip_config(image_size: int = IMAGE_SIZE) -> dict:
    return CLIPVisionConfig(**{**TINY_CLIP, "image_size": image_size}).to_diff_dict()


FAMILY_NAMES = tuple(TINY_FAMILY_OVERRIDES)


def tiny_proxyv_config(proxyv_start_layer: int = 2, learn_proxy: bool = False, family: str = "llama", **overrides):
    """A 4-layer, width-64 decoder of `family` with the tiny CLIP tower and ProxyV from `proxyv_start_layer`."""
    image_size = overrides.pop("image_size", IMAGE_SIZE)
    values = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "pad_token_id": PAD_ID,
        "bos_token_id": 1,
        "eos_token_id": None,  # greedy runs never stop early
        # Weights 5x larger than Llama's default make attention peaky, so a wrong position, mask or
        # guidance changes logits by ~1e-2 rather than ~1e-6 (well above the tests' tolerance).
        "initializer_range": 0.1,
        "mm_vision_tower": "tiny-clip",
        "mm_vision_tower_config": tiny_clip_config(image_size),
        "per_crop_token_len": (image_size // 14) ** 2,
        "proxyv_reduce_factor": 2,
        "proxyv_start_layer": proxyv_start_layer,
        "learn_proxy": learn_proxy,
    }
    values.update(TINY_FAMILY_OVERRIDES[family])
    values.update(overrides)
    return FAMILIES[family].proxyv_config(**values)


def _randomise_small_params(model, generator: torch.Generator) -> None:
    """Give every RMSNorm weight a non-trivial value so a misplaced norm cannot hide."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("layernorm.weight", "norm.weight", "layernorm_post.weight")) and param.ndim == 1:
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))


def tiny_proxyv_model(seed: int = 0, attn_implementation: str = "eager", **config_overrides):
    """A randomly initialised tiny ProxyV model (fp32, eval); the same seed gives the same weights."""
    config = tiny_proxyv_config(**config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family_for_model_type(config.model_type).proxyv_causal_lm._from_config(
            config, attn_implementation=attn_implementation)
    _randomise_small_params(model, torch.Generator().manual_seed(seed + 1000))
    return model.float().eval()


def copy_with_attn(model, attn_implementation: str):
    """The same ProxyV model (config and weights) under another attention backend."""
    config = type(model.config)(**{k: v for k, v in model.config.to_dict().items() if k != "model_type"})
    twin = type(model)._from_config(config, attn_implementation=attn_implementation)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.float().eval()


def baseline_twin(model, attn_implementation: str = "eager"):
    """The family's baseline causal LM with `model`'s weights (ProxyV-only weights left out)."""
    values = {k: v for k, v in model.config.to_dict().items() if k != "model_type" and k not in PROXYV_KEYS}
    values["image_newline_positions"] = model.config.image_newline_positions
    classes = family_for_model_type(model.config.model_type)
    baseline = classes.causal_lm._from_config(classes.config(**values), attn_implementation=attn_implementation)
    result = baseline.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys, result.missing_keys
    extra = {k for k in result.unexpected_keys if not k.startswith(("model.vision_mlp_layers.", "model.proxyv_initializer."))}
    assert not extra, extra
    return baseline.float().eval()


def random_crops(crop_counts, seed: int = 0, image_size: int = IMAGE_SIZE) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, 3, image_size, image_size, generator=generator) for count in crop_counts]


def pad_batch(samples, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids [B, L], attention_mask [B, L]) padded with `PAD_ID` on `side`."""
    length = max(len(s) for s in samples)
    ids = torch.full((len(samples), length), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(samples), length, dtype=torch.long)
    for b, sample in enumerate(samples):
        span = slice(length - len(sample), length) if side == "left" else slice(0, len(sample))
        ids[b, span] = torch.tensor(sample)
        mask[b, span] = 1
    return ids, mask


def split_crops_by_sample(samples, crops: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The per-image crop tensors grouped by the sample whose placeholders they fill."""
    grouped, cursor = [], 0
    for sample in samples:
        count = sum(1 for t in sample if t == IMG)
        grouped.append(crops[cursor : cursor + count])
        cursor += count
    return grouped


def expanded_length(sample, crop_counts, tokens_per_crop: int = TOKENS_PER_CROP) -> int:
    """Length of a sample after every placeholder became its crops (g*g tokens + 1 newline each)."""
    return len(sample) - len(crop_counts) + sum(c * (tokens_per_crop + 1) for c in crop_counts)


# ----------------------------------------------------------------------------- checkpoint folders

TINY_WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(VOCAB_SIZE - 4)]  # ids 0..3 as in the config


def tiny_word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer over `VOCAB_SIZE` words."""
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(TINY_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=4096)


def save_clip_folder(path, seed: int = 0, image_size: int = IMAGE_SIZE) -> Path:
    """A standalone tiny CLIP tower folder (config, weights, PIL image processor)."""
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = CLIPVisionModel(CLIPVisionConfig(**{**TINY_CLIP, "image_size": image_size}))
    tower.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path
