"""The dense twin of a ProxyV / PyramidDrop / VisionZip LLaVA model: the same weights run as the plain
LLaVA-NeXT baseline of its family (what ProxyV from layer s = L computes), for comparing prefill
cost on the same input (the web demo's "against the dense model" line).

`dense_config(config)` drops the ProxyV and token-reduction keys and keeps everything else, including
the newline scheme, so the twin sees the same sequence. `dense_twin(model)` builds the family's
baseline class on the meta device and assigns `model`'s own tensors to it: no weight is copied, so
the twin costs no memory and sees in-place changes to the weights (after `model.to(...)` or replaced
parameters, build it again).
"""

from __future__ import annotations

import torch

from llava.model.language_model.families import family_for_model_type
from llava.model.language_model.proxyv_decoder import PROXYV_CONFIG_KEYS

# A checkpoint's token-reduction settings (VisionZip, PyramidDrop): the dense model has none.
REDUCTION_KEYS = ("vision_token_reduction", "visionzip_dominant", "visionzip_contextual", "pyramid_drop_layers",
                  "pyramid_drop_ratio")
# Keys of a saved config.json that describe the file, not the model.
NOT_CONFIG_KEYS = ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map")


def is_dense(config) -> bool:
    """Whether `config` is the plain baseline: no ProxyV layers and no vision-token reduction."""
    start = getattr(config, "proxyv_start_layer", None)
    proxyv_layers = 0 if start is None else config.num_hidden_layers - start
    reduced = getattr(config, "vision_token_reduction", None) or getattr(config, "pyramid_drop_layers", None)
    return proxyv_layers == 0 and not reduced and getattr(config, "proxyv_variant", "proxyv") == "proxyv"


def dense_config(config, vision_config: dict | None = None):
    """The baseline config of `config`'s family with its architecture, tower and newline scheme;
    `vision_config` (the loaded tower's) is inlined when the config only names its tower."""
    classes = family_for_model_type(config.model_type)
    if classes is None:
        raise ValueError(f"model_type '{config.model_type}' is not a LLaVA / ProxyV config; it has no dense twin.")
    dropped = {*NOT_CONFIG_KEYS, *PROXYV_CONFIG_KEYS, *REDUCTION_KEYS}
    values = {key: value for key, value in config.to_dict().items() if key not in dropped}
    values["image_newline_positions"] = config.image_newline_positions
    if vision_config is not None and not values.get("mm_vision_tower_config"):
        values["mm_vision_tower_config"] = vision_config
    return classes.config(**values)


@torch.no_grad()
def dense_twin(model):
    """The family's baseline causal LM over `model`'s own parameters and buffers (shared, not copied),
    in eval mode, with the same attention implementation."""
    tower = model.get_vision_tower()
    config = dense_config(model.config, tower.config.to_dict())
    classes = family_for_model_type(model.config.model_type)
    with torch.device("meta"):
        twin = classes.causal_lm._from_config(config, attn_implementation=model.config._attn_implementation,
                                              dtype=model.dtype)
    source = model.state_dict()
    wanted = twin.state_dict()
    missing = sorted(set(wanted) - set(source))
    if missing:
        raise ValueError(f"The dense twin needs weights the model does not have: {', '.join(missing[:5])}.")
    twin.load_state_dict({name: source[name] for name in wanted}, strict=True, assign=True)
    _share_buffers(twin, model)
    twin.tie_weights()
    return twin.eval()


def _share_buffers(twin, model) -> None:
    """The twin's buffers that are not in a state dict (rotary frequencies, position ids) come from `model`."""
    buffers = dict(model.named_buffers())
    for name, buffer in list(twin.named_buffers()):
        if not buffer.is_meta:
            continue
        if name not in buffers:
            raise ValueError(f"The dense twin's buffer {name} has no counterpart in the model.")
        module_name, _, attribute = name.rpartition(".")
        module = twin.get_submodule(module_name)
        persistent = attribute not in module._non_persistent_buffers_set
        module.register_buffer(attribute, buffers[name], persistent=persistent)
