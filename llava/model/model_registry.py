"""Which causal-LM class a config asks for: decided from `model_type`, `proxyv` and the reduction
options, never from a path. Every decoder family's types come from `language_model.families`."""

import json
import os

from .language_model.families import FAMILIES, family_for_model_type


def known_model_types() -> list[str]:
    return sorted(t for classes in FAMILIES.values()
                  for t in (classes.family.baseline_model_type, classes.family.proxyv_model_type))


def _unknown_model_type(model_type) -> ValueError:
    return ValueError(
        f"Unknown model_type '{model_type}' for a LLaVA checkpoint. Known: {', '.join(known_model_types())}. "
        "A plain language model (e.g. model_type 'llama') is the starting point of training, not a LLaVA model."
    )


def _refuse_hf_llava_format(values: dict, model_path: str) -> None:
    """Hugging Face's own LLaVA format (llava-hf/*, LlavaForConditionalGeneration) also says model_type
    "llava", with the language model's config nested in `text_config`: another layout of the weights."""
    if "text_config" in values:
        raise ValueError(f"{model_path} is in Hugging Face's LLaVA format (llava-hf, a nested text_config), which "
                         "this package does not load; use the original release (e.g. liuhaotian/llava-v1.5-7b) or "
                         "transformers' LlavaForConditionalGeneration.")


def check_model_type(model_path: str) -> None:
    """Fail with our message before transformers reads a local config of a type we cannot load."""
    config_file = os.path.join(model_path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            values = json.load(handle)
        _refuse_hf_llava_format(values, model_path)
        if family_for_model_type(values.get("model_type")) is None:
            raise _unknown_model_type(values.get("model_type"))


def read_llava_config(model_path: str):
    """The config of a checkpoint folder, config file or hub name; a family's legacy type (LLaVA-1.5's
    `model_type: "llava"`) is read into that family's LLaVA config, which it is."""
    from transformers import AutoConfig
    from transformers.configuration_utils import PreTrainedConfig

    values, _ = PreTrainedConfig.get_config_dict(model_path)
    _refuse_hf_llava_format(values, model_path)
    classes = family_for_model_type(values.get("model_type"))
    if classes is not None and values["model_type"] in classes.family.legacy_model_types:
        return classes.config.from_dict({k: v for k, v in values.items() if k != "model_type"})
    return AutoConfig.from_pretrained(model_path)


def causal_lm_class_for_config(config):
    """The class to load `config` into; unknown model types are a clear error.

    A baseline type with the authors' `proxyv: true` (their releases: `llava_llama`, `llava_qwen`,
    `llava_phi`) is that family's ProxyV model; with `pyramid_drop_layers` it is the baseline's
    weights in a decoder that drops vision tokens.
    """
    model_type = getattr(config, "model_type", None)
    classes = family_for_model_type(model_type)
    if classes is None:
        raise _unknown_model_type(model_type)
    if model_type == classes.family.proxyv_model_type or getattr(config, "proxyv", None):
        return classes.proxyv_causal_lm
    if getattr(config, "pyramid_drop_layers", None):
        return classes.pyramid_drop_causal_lm
    return classes.causal_lm


def config_for_class(config, model_class):
    """`config` as the class's own config type (the authors' `llava_qwen` + proxyv -> ProxyV config)."""
    if isinstance(config, model_class.config_class):
        return config
    return model_class.config_class(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
