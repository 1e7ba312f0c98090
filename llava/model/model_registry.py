"""Which causal-LM class a config asks for: decided from `model_type` and `proxyv`, never a path."""

import json
import os

from .language_model.llava_llama import LlavaLlamaForCausalLM
from .language_model.proxyv_llama import LlavaProxyVLlamaForCausalLM, proxyv_config_from
from .language_model.pyramid_drop_llama import LlavaPyramidDropLlamaForCausalLM

_BY_MODEL_TYPE = {
    "llava_llama": LlavaLlamaForCausalLM,
    "llava_proxyv_llama": LlavaProxyVLlamaForCausalLM,
}
# The authors' release writes ProxyV checkpoints as `llava_llama` with `proxyv: true`.
_PROXYV_BY_MODEL_TYPE = {"llava_llama": LlavaProxyVLlamaForCausalLM}


def _unknown_model_type(model_type) -> ValueError:
    return ValueError(
        f"Unknown model_type '{model_type}' for a LLaVA checkpoint. Known: {', '.join(sorted(_BY_MODEL_TYPE))}. "
        "A plain language model (e.g. model_type 'llama') is the starting point of training, not a LLaVA model."
    )


def check_model_type(model_path: str) -> None:
    """Fail with our message before transformers reads a local config of a type we cannot load."""
    config_file = os.path.join(model_path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type")
        if model_type not in _BY_MODEL_TYPE:
            raise _unknown_model_type(model_type)


def causal_lm_class_for_config(config):
    """The class to load `config` into; unknown model types are a clear error."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _BY_MODEL_TYPE:
        raise _unknown_model_type(model_type)
    if getattr(config, "proxyv", None) and model_type in _PROXYV_BY_MODEL_TYPE:
        return _PROXYV_BY_MODEL_TYPE[model_type]
    if getattr(config, "pyramid_drop_layers", None) and model_type == "llava_llama":
        return LlavaPyramidDropLlamaForCausalLM  # the baseline's weights, a decoder that drops vision tokens
    return _BY_MODEL_TYPE[model_type]


def config_for_class(config, model_class):
    """`config` as the class's own config type (the authors' `llava_llama` + proxyv -> ProxyV config)."""
    if isinstance(config, model_class.config_class):
        return config
    if model_class is LlavaProxyVLlamaForCausalLM:
        return proxyv_config_from(config)
    return model_class.config_class(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
