"""Loading a LoRA output folder (`llava.train.lora` writes it) onto its base model, and merging it.

A LoRA folder is recognised by its `adapter_config.json`, never by its name. Its LLaVA
`config.json` builds the model; `model_base` (the language model the run started from, or a full
LLaVA checkpoint for a task LoRA) gives the frozen weights; `non_lora_trainables.bin` the projector,
newline, ProxyV modules and whatever else trained fully; the adapter is then merged in.

Before anything heavy loads, the base is checked against the adapter: the same decoder family, and
every adapted layer present with the adapter's input and output sizes; a mismatch is one
`UsageError` naming both folders.
"""

import importlib.util
import logging
import os

from torch import nn

from llava.errors import DamagedInputError, UsageError, read_json_file, read_safetensors_header

from .language_model.families import family_for_llm, family_for_model_type
from .projector_weights import load_mm_projector_weights

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
NON_LORA_FILE = "non_lora_trainables.bin"
_PEFT_PREFIX = "base_model.model."  # PEFT's name for the wrapped model, in its files and its parameters
_WRAPPED = ".base_layer"  # PEFT moves a wrapped module's own weights under this name


def is_lora_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG_FILE))


def plain_name(name: str) -> str:
    """A PEFT-wrapped parameter's name as the plain (merged) model names it."""
    name = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
    return name.replace(_WRAPPED, "")


def is_lora_parameter(name: str) -> bool:
    return ".lora_" in name


def check_lora_folder(lora_dir: str, model_base: str | None) -> None:
    """The folder's adapter files are whole, `model_base` is given (a LoRA folder holds no base weights)
    and PEFT, which merges the adapter, is installed."""
    adapter_config = read_json_file(os.path.join(lora_dir, ADAPTER_CONFIG_FILE), "LoRA adapter config")
    if importlib.util.find_spec("peft") is None:
        raise UsageError(f"{lora_dir} holds a LoRA adapter, and merging it needs the peft package: "
                         "pip install 'proxyv[train]' (or pip install peft).")
    if model_base is None:
        recorded = adapter_config.get("base_model_name_or_path") if isinstance(adapter_config, dict) else None
        hint = f" (it was trained from {recorded})" if recorded else ""
        raise UsageError(f"{lora_dir} holds a LoRA adapter, not full weights; pass model_base (--model-base) naming "
                         f"the language model the LoRA run started from{hint}.")
    for name in (ADAPTER_WEIGHTS_FILE, NON_LORA_FILE):
        if not os.path.isfile(os.path.join(lora_dir, name)):
            raise DamagedInputError(f"LoRA folder {lora_dir} lacks {name}; copy it back from the training output "
                                    "(training writes it with the adapter).")
    read_safetensors_header(os.path.join(lora_dir, ADAPTER_WEIGHTS_FILE))


SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size")
# What a QLoRA run's config records about its quantized training copy; the base it merges onto is not quantized.
QUANTIZATION_KEYS = ("quantization_config", "_pre_quantization_dtype")


def check_base_matches(config, lora_dir: str, model_base: str) -> None:
    """`model_base` is of the decoder family and size the LoRA run trained (its config.json says which)."""
    base_config_path = os.path.join(model_base, "config.json")
    if not os.path.isfile(base_config_path):
        return  # a hub name: its weights' names and shapes are checked when they load
    base_config = read_json_file(base_config_path, "model_base config")
    base_type = base_config.get("model_type")
    base_family = family_for_model_type(base_type)
    if base_family is None:
        try:
            base_family = family_for_llm(base_type)
        except ValueError:
            base_family = None
    lora_family = family_for_model_type(config.model_type)
    if base_family is None or lora_family is None or base_family.family.name != lora_family.family.name:
        raise UsageError(f"model_base {model_base} is a '{base_type}' model but the LoRA adapter in {lora_dir} was "
                         f"trained on a {config.model_type} model; give the language model the LoRA run started from.")
    differs = [f"{key} {base_config[key]} (adapter's model: {getattr(config, key)})" for key in SHAPE_KEYS
               if key in base_config and base_config[key] != getattr(config, key, base_config[key])]
    if differs:
        raise UsageError(f"model_base {model_base} is another size than the model the LoRA adapter in {lora_dir} was "
                         f"trained on: {', '.join(differs)}; give the language model the LoRA run started from.")


def _adapter_shapes(lora_dir: str) -> dict[str, dict[str, tuple]]:
    """{plain module name: {"A": shape, "B": shape}} from the adapter file's header."""
    header = read_safetensors_header(os.path.join(lora_dir, ADAPTER_WEIGHTS_FILE))
    modules: dict[str, dict[str, tuple]] = {}
    for key, info in header.items():
        for part in ("A", "B"):
            marker = f".lora_{part}."
            if marker in key:
                modules.setdefault(plain_name(key.split(marker)[0]), {})[part] = tuple(info["shape"])
    return modules


def check_adapter_fits(model, lora_dir: str) -> None:
    """Every adapted layer exists in the model its `config.json` builds, with the adapter's input and
    output sizes: else the folder mixes files of different runs (PEFT's own error names neither)."""
    layers = dict(model.named_modules())
    for name, parts in sorted(_adapter_shapes(lora_dir).items()):
        layer = layers.get(name)
        sizes = (parts["A"][1], parts["B"][0]) if {"A", "B"} <= set(parts) else None
        if not isinstance(layer, nn.Linear) or sizes != (layer.in_features, layer.out_features):
            found = f"{layer.in_features} -> {layer.out_features}" if isinstance(layer, nn.Linear) else "no such layer"
            raise DamagedInputError(f"the LoRA adapter in {lora_dir} does not fit the model its config.json describes: "
                                    f"{name} is {sizes} in {ADAPTER_WEIGHTS_FILE}, {found} in the model. The folder "
                                    "mixes files of different runs; copy the run's own files back.")


def without_quantization(config):
    """`config` (a LoRA run's) without what a QLoRA run recorded about quantizing its training copy."""
    for key in QUANTIZATION_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    return config


def load_non_lora_trainables(model, lora_dir: str) -> set[str]:
    """The fully trained weights saved beside the adapter; returns the names loaded."""
    return load_mm_projector_weights(model, os.path.join(lora_dir, NON_LORA_FILE))


def merge_lora_adapter(model, lora_dir: str):
    """The model with the adapter in `lora_dir` added to its weights (a plain model again)."""
    from peft import PeftModel

    logger.info("Merging the LoRA adapter in %s", lora_dir)
    return PeftModel.from_pretrained(model, lora_dir).merge_and_unload()
