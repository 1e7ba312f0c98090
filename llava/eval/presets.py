"""Model shapes for the efficiency benchmark: presets with real LLaVA-NeXT shapes, or a config file.

A `ModelSpec` holds what is needed to build the baseline and ProxyV variants of one model with
random weights: the values of a `LlavaConfig` (Llama decoder + vision tower + projector) and the
ProxyV options. Presets use the real shapes of the released LLMs with the CLIP-L/336 tower and the
`mlp2x_gelu` projector; `tiny` uses the package's tiny test shapes. `load_model_spec` also reads a
LLaVA / ProxyV checkpoint's `config.json` or a plain Llama `config.json` (the tower then defaults
to CLIP-L/336). Only the shapes matter: no weights are read.
"""

import json
import os
from dataclasses import dataclass, field

from transformers import CLIPVisionConfig

from llava.tiny.models import TINY_CLIP_CONFIG, TINY_LLM_CONFIG

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
UNSUPPORTED_REASON = "not yet supported (the model code supports Llama-architecture LLMs only)"
# ProxyV's own config keys: a baseline variant built from a ProxyV config drops them.
PROXYV_KEYS = ("proxyv", "proxyv_start_layer", "learn_proxy", "proxyv_reduce_factor", "per_crop_token_len",
               "max_num_image_crops", "hidden_size_reduce_factor", "image_token_len_per_side", "proxyv_variant",
               "vision_mask_ratio")
PROXYV_OPTION_KEYS = ("proxyv_reduce_factor", "max_num_image_crops", "hidden_size_reduce_factor")
NOT_CONFIG_KEYS = ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map")
LLAVA_MODEL_TYPES = ("llava_llama", "llava_proxyv_llama")


@dataclass(frozen=True)
class ModelSpec:
    """One model's shapes: `llava_values` build a `LlavaConfig`; `proxyv_options` add ProxyV's."""

    name: str
    llava_values: dict
    proxyv_options: dict = field(default_factory=dict)

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


def _llama(hidden, intermediate, layers, heads, kv_heads, vocab, rope_theta, max_positions) -> dict:
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "max_position_embeddings": max_positions,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    }


LLM_PRESETS = {
    "vicuna-7b": ("Vicuna-1.5-7B", _llama(4096, 11008, 32, 32, 32, 32000, 10000.0, 4096)),
    "vicuna-13b": ("Vicuna-1.5-13B", _llama(5120, 13824, 40, 40, 40, 32000, 10000.0, 4096)),
    "llama3-8b": ("Llama-3-8B", _llama(4096, 14336, 32, 32, 8, 128256, 500000.0, 8192)),
    "tiny": ("tiny (test shapes)", {**TINY_LLM_CONFIG, "vocab_size": 1000}),
}
UNSUPPORTED_PRESETS = {"qwen2-7b": "Qwen2-7B", "phi3-mini": "Phi-3-mini", "internlm2.5-7b": "InternLM2.5-7B"}
UNSUPPORTED_MODEL_TYPES = {"qwen2": "Qwen2", "phi3": "Phi-3", "internlm2": "InternLM2"}


def preset_names() -> list[str]:
    return [*LLM_PRESETS, *UNSUPPORTED_PRESETS]


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
    """The spec of a preset; unsupported and unknown names are a clear `ValueError`."""
    if name in UNSUPPORTED_PRESETS:
        raise ValueError(f"Preset '{name}' ({UNSUPPORTED_PRESETS[name]}) is {UNSUPPORTED_REASON}.")
    if name not in LLM_PRESETS:
        raise ValueError(f"Unknown model preset '{name}'. Known: {', '.join(preset_names())}, or a config.json path.")
    label, llm = LLM_PRESETS[name]
    if name == "tiny":
        return ModelSpec(label, {**llm, **_multimodal_values("tiny-clip", TINY_CLIP_CONFIG)})
    return ModelSpec(label, {**llm, **_multimodal_values(CLIP_L_336_NAME, CLIP_L_336)})


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


def _llava_spec(name: str, raw: dict) -> ModelSpec:
    values = {k: v for k, v in raw.items() if k not in NOT_CONFIG_KEYS and k not in PROXYV_KEYS}
    # The authors' configs carry `proxyv` and no scheme key, which means the release scheme.
    values.setdefault("image_newline_positions", "release" if "proxyv" in raw else "natural")
    values["mm_vision_tower_config"] = _tower_config(values)
    values.setdefault("mm_hidden_size", values["mm_vision_tower_config"]["hidden_size"])
    options = {k: raw[k] for k in PROXYV_OPTION_KEYS if raw.get(k) is not None}
    return ModelSpec(name, values, options)


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A preset name, or a path to a `config.json` / checkpoint folder (LLaVA, ProxyV or plain Llama)."""
    if name_or_path in LLM_PRESETS or name_or_path in UNSUPPORTED_PRESETS:
        return preset_spec(name_or_path)
    config_file = _config_file(name_or_path)
    with open(config_file, encoding="utf-8") as handle:
        raw = json.load(handle)
    model_type = raw.get("model_type")
    name = os.path.basename(os.path.dirname(os.path.abspath(config_file))) or config_file
    if model_type in LLAVA_MODEL_TYPES:
        return _llava_spec(name, raw)
    if model_type == "llama":
        values = {k: v for k, v in raw.items() if k not in NOT_CONFIG_KEYS}
        return ModelSpec(name, {**values, **_multimodal_values(CLIP_L_336_NAME, CLIP_L_336)})
    if model_type in UNSUPPORTED_MODEL_TYPES:
        raise ValueError(f"{config_file}: model_type '{model_type}' ({UNSUPPORTED_MODEL_TYPES[model_type]}) is "
                         f"{UNSUPPORTED_REASON}.")
    raise ValueError(f"{config_file}: unknown model_type '{model_type}'. Known: "
                     f"{', '.join((*LLAVA_MODEL_TYPES, 'llama'))}.")
