"""Which causal-LM class a config asks for: decided from `model_type` and `proxyv`, never a path."""

from .language_model.llava_llama import LlavaLlamaForCausalLM

_BY_MODEL_TYPE = {"llava_llama": LlavaLlamaForCausalLM}
_PROXYV_BY_MODEL_TYPE: dict = {}


def register_proxyv_class(model_type: str, model_class) -> None:
    """Register the ProxyV class that a `model_type` config with `proxyv: true` loads into."""
    _PROXYV_BY_MODEL_TYPE[model_type] = model_class
    _BY_MODEL_TYPE.setdefault(model_class.config_class.model_type, model_class)


def causal_lm_class_for_config(config):
    """The class to load `config` into; unknown model types are a clear error."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _BY_MODEL_TYPE:
        raise ValueError(
            f"Unknown model_type '{model_type}' for a LLaVA checkpoint. Known: {', '.join(sorted(_BY_MODEL_TYPE))}. "
            "A plain language model (e.g. model_type 'llama') is loaded through training's --model_name_or_path."
        )
    if getattr(config, "proxyv", None) and model_type in _PROXYV_BY_MODEL_TYPE:
        return _PROXYV_BY_MODEL_TYPE[model_type]
    return _BY_MODEL_TYPE[model_type]
