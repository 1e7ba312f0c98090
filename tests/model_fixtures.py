"""Tiny LLaVA models, images, tokenizers and checkpoint folders for the model tests.

Everything is built in-process and offline. The defaults keep the real CLIP-L/336 geometry
(336 px crops, 14 px patches, a 24x24 grid: 576 tokens per crop) with tiny widths; pass
`image_size=56` (a 4x4 grid, 16 tokens per crop) where a test only needs the layout's shape and
wants to be fast.

Helpers:
* `tiny_vision_config(**overrides)` -> dict for `mm_vision_tower_config`.
* `tiny_llava_config(image_size=336, family="llama", **overrides)` -> the family's baseline config.
* `tiny_llava_model(seed=0, attn_implementation="sdpa", family="llama", **config_overrides)` -> model in eval mode.
* `random_images(crop_counts, seed=0, image_size=336)` -> list of [C, 3, S, S] tensors.
* `tiny_wordlevel_tokenizer()` -> a WordLevel `PreTrainedTokenizerFast` over `TINY_VOCAB`.
* `save_tiny_checkpoint(model, path, tokenizer=None)` -> folder with weights, tokenizer and processor.
* `save_tiny_clip(path, seed=0, image_size=336)` -> a standalone CLIP tower folder (weights + processor).
* `multimodal_keys(state_dict)` -> the keys that a plain Llama does not have.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.model import FAMILIES
from llava.model.checkpoint_names import PROJECTOR_PREFIXES, TOWER_PREFIXES
from llava.tiny.models import TINY_FAMILY_OVERRIDES

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
TINY_VOCAB = SPECIAL_TOKENS + [f"w{i}" for i in range(60)]  # 64 entries
VOCAB_SIZE = len(TINY_VOCAB)

TINY_VISION = {
    "image_size": 336,
    "patch_size": 14,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "projection_dim": 32,
}

TINY_LLM = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "pad_token_id": PAD_ID,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
}

MULTIMODAL_PREFIXES = TOWER_PREFIXES + PROJECTOR_PREFIXES  # a baseline's multimodal weights


def tiny_vision_config(**overrides) -> dict:
    """The tiny CLIP tower's config as the diff dict LLaVA configs carry in `mm_vision_tower_config`."""
    return CLIPVisionConfig(**{**TINY_VISION, **overrides}).to_diff_dict()


def tokens_per_crop(image_size: int = 336, patch_size: int = 14) -> int:
    return (image_size // patch_size) ** 2


def tiny_llava_config(image_size: int = 336, family: str = "llama", **overrides):
    """A tiny baseline config of `family` (2 layers, width 64) with the tiny CLIP tower inlined."""
    values = {
        **TINY_LLM,
        **TINY_FAMILY_OVERRIDES[family],
        "mm_vision_tower": "tiny-clip",
        "mm_vision_tower_config": tiny_vision_config(image_size=image_size),
    }
    values.update(overrides)
    return FAMILIES[family].config(**values)


def tiny_llava_model(seed: int = 0, attn_implementation: str = "sdpa", model_class=None, family: str = "llama",
                     **config_overrides):
    """A randomly initialised tiny model in eval mode; the same seed gives the same weights.

    The global torch RNG is left untouched. `model_class` defaults to the family's baseline class.
    """
    model_class = model_class or FAMILIES[family].causal_lm
    config = tiny_llava_config(family=family, **config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class._from_config(config, attn_implementation=attn_implementation)
    return model.float().eval()


def plain_llama_config(config) -> LlamaConfig:
    """The plain `LlamaConfig` with the same decoder hyper-parameters as a LLaVA config."""
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_parameters",
        "hidden_act",
        "tie_word_embeddings",
        "attention_bias",
        "mlp_bias",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    )
    return LlamaConfig(**{key: getattr(config, key) for key in keys})


def multimodal_keys(state_dict) -> set[str]:
    """The parameter names a plain Llama does not have (tower, projector, image newline)."""
    return {key for key in state_dict if key.startswith(MULTIMODAL_PREFIXES)}


def random_images(crop_counts, seed: int = 0, image_size: int = 336) -> list[torch.Tensor]:
    """One random pixel tensor [C, 3, S, S] per entry of `crop_counts`."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, 3, image_size, image_size, generator=generator) for count in crop_counts]


def tiny_wordlevel_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer over `TINY_VOCAB` with pad/bos/eos/unk set."""
    vocab = {token: index for index, token in enumerate(TINY_VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=2048,
    )


def tiny_image_processor(image_size: int = 336) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def save_tiny_checkpoint(model, path, tokenizer=None, image_processor=None) -> Path:
    """Save `model` with a tokenizer and a CLIP image processor, as a LLaVA checkpoint folder."""
    path = Path(path)
    model.save_pretrained(path)
    (tokenizer or tiny_wordlevel_tokenizer()).save_pretrained(path)
    if image_processor is None:
        image_size = (
            model.get_vision_tower().config.image_size if model.get_vision_tower() is not None else 336
        )
        image_processor = tiny_image_processor(image_size)
    image_processor.save_pretrained(path)
    return path


def save_tiny_clip(path, seed: int = 0, image_size: int = 336) -> Path:
    """Save a standalone tiny `CLIPVisionModel` and its processor (what `mm_vision_tower` may name)."""
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = CLIPVisionModel(CLIPVisionConfig(**{**TINY_VISION, "image_size": image_size}))
    tower.save_pretrained(path)
    tiny_image_processor(image_size).save_pretrained(path)
    return path


def adamw_steps(model, steps: int, lr: float = 1e-3, **batch) -> list[float]:
    """Train mode, `steps` AdamW steps on one batch (the model's forward kwargs), eval mode; the losses."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses
