"""Model shapes for the efficiency benchmark: presets with the real shapes of the paper's backbones, or a config file.

A `ModelSpec` holds what is needed to build the baseline and ProxyV variants of one model with
random weights: its decoder family (a key of `llava.model.FAMILIES`, whose config and model
classes the benchmark builds), the values of that family's LLaVA config (decoder + vision tower +
projector) and the ProxyV options. Presets use the real shapes of the released LLMs with the
CLIP-L/336 tower and the `mlp2x_gelu` projector; `tiny` (Llama) and `tiny-<family>` use the
package's tiny test shapes. `load_model_spec` also reads a LLaVA / ProxyV checkpoint's `config.json`
or a plain LLM `config.json` of any supported family (the tower then defaults to CLIP-L/336).
Only the shapes matter: no weights are read and nothing is downloaded.
"""

import json
import os
from dataclasses import dataclass, field

from transformers import CLIPVisionConfig

from llava.model import FAMILIES, family_for_model_type
from llava.model.dense_twin import NOT_CONFIG_KEYS, REDUCTION_KEYS
from llava.model.image_merge import FLAT_NEWLINE
from llava.model.language_model.proxyv_decoder import PROXYV_CONFIG_KEYS
from llava.tiny.models import (
    TINY_CLIP_CONFIG,
    TINY_FAMILY_OVERRIDES,
    TINY_LLM_CONFIG,
    TINY_PROXYV_REDUCE_FACTOR,
)

# openai/clip-vit-large-patch14-336, vision_config of its config.json (the tower of every LLaVA-NeXT / ProxyV model).
CLIP_L_336_NAME = "openai/clip-vit-large-patch14-336"
CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# ProxyV's own config keys (PROXYV_CONFIG_KEYS): a baseline variant built from a ProxyV config drops
# them; these few are kept as the spec's ProxyV options.
PROXYV_OPTION_KEYS = ("proxyv_reduce_factor", "max_num_image_crops", "hidden_size_reduce_factor",
                      "learned_proxy_guidance")
# NOT_CONFIG_KEYS and a checkpoint's token-reduction settings (REDUCTION_KEYS) are dropped too: the
# benchmark's baseline row is the plain model and its VisionZip / PyramidDrop rows set their own.
# The model_type names a config.json may carry, all from the family registry (never listed here).
LLM_MODEL_TYPES = {t: name for name, classes in FAMILIES.items() for t in classes.family.llm_model_types}
LLAVA_MODEL_TYPES = {t: name for name, classes in FAMILIES.items()
                     for t in (classes.family.baseline_model_type, classes.family.proxyv_model_type)}


@dataclass(frozen=True)
class ModelSpec:
    """One model's shapes: `family` picks the classes (`FAMILIES[family]`), `llava_values` build its
    LLaVA config, `proxyv_options` add ProxyV's."""

    name: str
    llava_values: dict
    proxyv_options: dict = field(default_factory=dict)
    family: str = "llama"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Unknown decoder family '{self.family}'. Known: {', '.join(FAMILIES)}.")

    @property
    def num_layers(self) -> int:
        return self.llava_values["num_hidden_layers"]

    @property
    def vision_config(self) -> dict:
        return self.llava_values["mm_vision_tower_config"]

    @property
    def image_size(self) -> int:
        return self.vision_config["image_size"]

    @property
    def tokens_per_crop(self) -> int:
        """g*g: patches per crop side, squared."""
        return (self.vision_config["image_size"] // self.vision_config["patch_size"]) ** 2


def _decoder(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, *,
             rope_theta: float, rms_eps: float, max_positions: int, tie: bool = False, head_dim: int | None = None,
             rope: dict | None = None, **extra) -> dict:
    """A decoder's config values (SwiGLU FFN, RMSNorm, RoPE, grouped-query attention)."""
    values = {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": rms_eps,
        "rope_parameters": {"rope_type": "default", **(rope or {}), "rope_theta": rope_theta},
        "max_position_embeddings": max_positions,
        "hidden_act": "silu",
        "tie_word_embeddings": tie,
        **extra,
    }
    if head_dim is not None:
        values["head_dim"] = head_dim
    return values


@dataclass(frozen=True)
class Preset:
    label: str  # the table's model name
    family: str  # key of llava.model.FAMILIES
    values: dict  # the LLM's config values


# Every number below is copied by hand from the model's published config.json on the Hugging Face hub
# (repository named in the comment); nothing is downloaded. Keys that do not change the computation
# (token ids, dtype, initializer range) are left at the family's defaults.
LLM_PRESETS = {
    # lmsys/vicuna-7b-v1.5 (Llama-2-7B): 4096 / 11008, 32 layers, 32 heads (MHA), vocab 32000, eps 1e-5.
    "vicuna-7b": Preset("Vicuna-1.5-7B", "llama", _decoder(
        4096, 11008, 32, 32, 32, 32000, rope_theta=10000.0, rms_eps=1e-5, max_positions=4096)),
    # lmsys/vicuna-13b-v1.5 (Llama-2-13B): 5120 / 13824, 40 layers, 40 heads (MHA), vocab 32000.
    "vicuna-13b": Preset("Vicuna-1.5-13B", "llama", _decoder(
        5120, 13824, 40, 40, 40, 32000, rope_theta=10000.0, rms_eps=1e-5, max_positions=4096)),
    # meta-llama/Meta-Llama-3-8B-Instruct: 4096 / 14336, 32 layers, 32 heads, 8 kv heads, vocab 128256, theta 5e5.
    "llama3-8b": Preset("Llama-3-8B", "llama", _decoder(
        4096, 14336, 32, 32, 8, 128256, rope_theta=500000.0, rms_eps=1e-5, max_positions=8192)),
    # Qwen/Qwen2-7B-Instruct: 3584 / 18944, 28 layers, 28 heads, 4 kv heads, vocab 152064, theta 1e6, eps 1e-6,
    # q/k/v biases (part of the Qwen2 classes), use_sliding_window false (the base Qwen2-7B differs only in
    # max_position_embeddings 131072).
    "qwen2-7b": Preset("Qwen2-7B", "qwen2", _decoder(
        3584, 18944, 28, 28, 4, 152064, rope_theta=1000000.0, rms_eps=1e-6, max_positions=32768,
        use_sliding_window=False, max_window_layers=28)),
    # microsoft/Phi-3-mini-4k-instruct: 3072 / 8192, 32 layers, 32 heads (MHA), vocab 32064, fused qkv_proj and
    # gate_up_proj (part of the Phi-3 classes), sliding_window 2047, rope_scaling null.
    "phi3-mini": Preset("Phi-3-mini-4k", "phi3", _decoder(
        3072, 8192, 32, 32, 32, 32064, rope_theta=10000.0, rms_eps=1e-5, max_positions=4096,
        original_max_position_embeddings=4096, sliding_window=2047)),
    # internlm/internlm2_5-7b-chat after `python -m llava.tools.convert_internlm2` (a Llama checkpoint): 4096 /
    # 14336, 32 layers, 32 heads, 8 kv heads, vocab 92544, theta 1e6, rope_scaling dynamic x2, bias false.
    "internlm2.5-7b": Preset("InternLM2.5-7B", "llama", _decoder(
        4096, 14336, 32, 32, 8, 92544, rope_theta=1000000.0, rms_eps=1e-5, max_positions=32768,
        rope={"rope_type": "dynamic", "factor": 2.0}, attention_bias=False)),
    # Qwen/Qwen2.5-7B-Instruct: the same shapes as Qwen2-7B (3584 / 18944, 28 layers, 28 / 4 heads, vocab 152064).
    "qwen2.5-7b": Preset("Qwen2.5-7B", "qwen2", _decoder(
        3584, 18944, 28, 28, 4, 152064, rope_theta=1000000.0, rms_eps=1e-6, max_positions=32768,
        use_sliding_window=False, max_window_layers=28)),
    # Qwen/Qwen3-8B: 4096 / 12288, 36 layers, 32 heads, 8 kv heads, head_dim 128, vocab 151936, theta 1e6,
    # eps 1e-6, q/k RMSNorm per head (part of the Qwen3 classes), attention_bias false.
    "qwen3-8b": Preset("Qwen3-8B", "qwen3", _decoder(
        4096, 12288, 36, 32, 8, 151936, rope_theta=1000000.0, rms_eps=1e-6, max_positions=40960, head_dim=128,
        attention_bias=False, use_sliding_window=False, max_window_layers=36)),
}
# The package's tiny test shapes (llava.tiny.models) in every family; `tiny` is the Llama one.
TINY_TOKEN_IDS = {"vocab_size": 1000, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
TINY_PRESETS = {
    ("tiny" if family == "llama" else f"tiny-{family}"):
        Preset("tiny" if family == "llama" else f"tiny-{family}", family,
               {**TINY_LLM_CONFIG, **overrides, **TINY_TOKEN_IDS})
    for family, overrides in TINY_FAMILY_OVERRIDES.items()
}
PRESETS = {**LLM_PRESETS, **TINY_PRESETS}


def preset_names() -> list[str]:
    return list(PRESETS)


def _multimodal_values(vision_tower: str, vision_config: dict) -> dict:
    return {
        "mm_vision_tower": vision_tower,
        "mm_vision_tower_config": dict(vision_config),
        "mm_hidden_size": vision_config["hidden_size"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "image_newline_positions": "natural",
    }


def preset_spec(name: str) -> ModelSpec:
    """The spec of a preset; an unknown name is a clear `ValueError`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset '{name}'. Known: {', '.join(preset_names())}, or a config.json path.")
    preset = PRESETS[name]
    tower = _multimodal_values("tiny-clip", TINY_CLIP_CONFIG) if name in TINY_PRESETS else \
        _multimodal_values(CLIP_L_336_NAME, CLIP_L_336)
    if name in TINY_PRESETS:
        return ModelSpec(preset.label, {**preset.values, **tower},
                         proxyv_options={"proxyv_reduce_factor": TINY_PROXYV_REDUCE_FACTOR}, family=preset.family)
    return ModelSpec(preset.label, {**preset.values, **tower}, family=preset.family)


def _config_file(path: str) -> str:
    config_file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(config_file):
        raise ValueError(f"--model '{path}' is neither a preset ({', '.join(preset_names())}) nor a config.json "
                         "or a folder holding one.")
    return config_file


def _tower_config(values: dict) -> dict:
    """The CLIP config a LLaVA config names: inlined, a local folder, or the CLIP-L/336 hub id."""
    if values.get("mm_vision_tower_config"):
        return values["mm_vision_tower_config"]
    tower = values.get("mm_vision_tower")
    if tower and os.path.isdir(tower):
        return CLIPVisionConfig.from_pretrained(tower).to_diff_dict()
    if tower == CLIP_L_336_NAME:
        return CLIP_L_336
    raise ValueError(f"The config names vision tower '{tower}' without `mm_vision_tower_config`; give a config "
                     f"that inlines it, a local tower folder, or '{CLIP_L_336_NAME}'.")


def _llava_spec(name: str, raw: dict, family: str) -> ModelSpec:
    dropped = {*NOT_CONFIG_KEYS, *PROXYV_CONFIG_KEYS, *REDUCTION_KEYS}
    values = {k: v for k, v in raw.items() if k not in dropped}
    # The authors' configs carry `proxyv` and no scheme key, which means the release scheme.
    values.setdefault("image_newline_positions", "release" if "proxyv" in raw else "natural")
    values["mm_vision_tower_config"] = _tower_config(values)
    # The benchmark's rows (ProxyV, VisionZip, PyramidDrop and their baseline) run on ProxyV's layout;
    # an official LLaVA-1.6 config names LLaVA-NeXT's, whose token count the rows could not share.
    values["mm_patch_merge_type"] = FLAT_NEWLINE
    values.setdefault("mm_hidden_size", values["mm_vision_tower_config"]["hidden_size"])
    options = {k: raw[k] for k in PROXYV_OPTION_KEYS if raw.get(k) is not None}
    if "proxyv" in raw and "learned_proxy_guidance" not in options:  # the authors' config: their family's way
        options["learned_proxy_guidance"] = FAMILIES[family].proxyv_config.release_learned_proxy_guidance
    return ModelSpec(name, values, options, family)


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A preset name, or a path to a `config.json` / checkpoint folder: a LLaVA or ProxyV checkpoint of
    any family (`llava_*` / `llava_proxyv_*`), or a plain LLM of a supported `model_type`."""
    if name_or_path in PRESETS:
        return preset_spec(name_or_path)
    config_file = _config_file(name_or_path)
    with open(config_file, encoding="utf-8") as handle:
        raw = json.load(handle)
    model_type = raw.get("model_type")
    name = os.path.basename(os.path.dirname(os.path.abspath(config_file))) or config_file
    if model_type in LLAVA_MODEL_TYPES:
        return _llava_spec(name, raw, family_for_model_type(model_type).family.name)
    if model_type in LLM_MODEL_TYPES:
        values = {k: v for k, v in raw.items() if k not in NOT_CONFIG_KEYS}
        return ModelSpec(name, {**values, **_multimodal_values(CLIP_L_336_NAME, CLIP_L_336)},
                         family=LLM_MODEL_TYPES[model_type])
    hint = (" InternLM2 / InternLM2.5 checkpoints are Llama-architecture: convert them with "
            "`python -m llava.tools.convert_internlm2` and give the converted folder.") if model_type == "internlm2" else ""
    raise ValueError(f"{config_file}: model_type '{model_type}' is not supported.{hint} Supported: "
                     f"{', '.join(LLM_MODEL_TYPES)} (plain LLMs) and {', '.join(LLAVA_MODEL_TYPES)} (LLaVA / ProxyV).")
