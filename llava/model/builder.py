"""`load_pretrained_model`: the loader LLaVA users and lmms-eval call.

The model class comes from the checkpoint's config (its `model_type` and `proxyv` key), never from
the path's name. Returns `(tokenizer, model, image_processor, context_len)` like LLaVA.
"""

import logging
import os
from contextlib import contextmanager

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from .backends import mask_limits_flash
from .checkpoint_names import TOWER_PREFIXES
from .model_registry import causal_lm_class_for_config, check_model_type, config_for_class
from .projector_weights import load_mm_projector_weights

logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> str:
    """`auto` -> CUDA when present, else CPU."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was asked for but CUDA is not available here; use --device cpu.")
    return device


def resolve_dtype(torch_dtype, device: str) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA (fp16 where bf16 is unsupported), unless asked otherwise."""
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype in (None, "auto"):
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if torch_dtype not in names:
        raise ValueError(f"Unknown torch_dtype '{torch_dtype}'. Known: {', '.join(names)}.")
    return names[torch_dtype]


def resolve_attn_implementation(requested: str | None, config) -> str:
    """The attention backend to load with; flash-attention only where it is installed and exact."""
    requested = requested or "sdpa"
    if requested not in ("eager", "sdpa", "flash_attention_2"):
        raise ValueError(f"Unknown attn_implementation '{requested}'. Known: eager, sdpa, flash_attention_2.")
    if requested != "flash_attention_2":
        return requested
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        logger.warning("flash-attn is not installed (pip install 'proxyv[flash]'); using sdpa instead.")
        return "sdpa"
    reason = mask_limits_flash(config)
    if reason:
        logger.warning("flash-attention cannot run this model (%s), so sdpa is used.", reason)
        return "sdpa"
    return requested


def load_image_processor(model_path: str, config):
    """The CLIP processor (PIL backend, as LLaVA-NeXT used) saved with the model or with its tower."""
    if os.path.isfile(os.path.join(model_path, "preprocessor_config.json")):
        return CLIPImageProcessorPil.from_pretrained(model_path)
    tower = getattr(config, "mm_vision_tower", None)
    if not tower:
        return None
    return CLIPImageProcessorPil.from_pretrained(tower)


def _check_model_path(model_path: str) -> None:
    """A local folder must hold a config; anything else must look like a hub name `org/name`."""
    if os.path.isdir(model_path):
        if not os.path.isfile(os.path.join(model_path, "config.json")):
            raise ValueError(f"{model_path} has no config.json; point --model-path at a saved checkpoint folder.")
    elif model_path.startswith(("/", ".", "~")) or model_path.count("/") != 1:
        raise ValueError(f"Model path {model_path} does not exist (and is not a hub name like 'org/name').")


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map=None,
    device: str | None = "auto",
    torch_dtype=None,
    attn_implementation: str | None = None,
    overwrite_config: dict | None = None,
    **kwargs,
):
    """Load a LLaVA / ProxyV checkpoint. `model_name` is accepted for LLaVA compatibility only.

    model_base: for a stage-1 folder that holds only `mm_projector.bin` (plus config), the language
    model to attach the projector to.
    """
    kwargs.pop("multimodal", None)  # lmms-eval passes it; every model here is multimodal
    if kwargs.pop("use_flash_attention_2", False):  # older LLaVA / lmms-eval spelling
        attn_implementation = "flash_attention_2"
    customized_config = kwargs.pop("customized_config", None)
    _check_model_path(model_path)
    if isinstance(device_map, str) and device_map != "auto":
        device = device_map  # "cpu", "cuda", "cuda:1": one device, as LLaVA's builder means it
    device = resolve_device(device)
    if (load_8bit or load_4bit) and not device.startswith("cuda"):
        raise ValueError("--load-8bit/--load-4bit need a CUDA GPU (bitsandbytes); on CPU load in full precision.")
    dtype = resolve_dtype(torch_dtype, device)
    check_model_type(model_path)
    config = customized_config if customized_config is not None else AutoConfig.from_pretrained(model_path)
    for key, value in (overwrite_config or {}).items():
        setattr(config, key, value)
    attn = resolve_attn_implementation(attn_implementation, config)
    model_class = causal_lm_class_for_config(config)
    config = config_for_class(config, model_class)

    # Shape mismatches are reported by `_finish_multimodal_weights` in one line, not by a RuntimeError.
    load_kwargs = {"dtype": dtype, "attn_implementation": attn, "ignore_mismatched_sizes": True, **kwargs}
    if load_8bit or load_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=load_8bit, load_in_4bit=load_4bit)
    weights_path = model_base or model_path
    with _without_load_report():
        model, info = model_class.from_pretrained(weights_path, config=config, output_loading_info=True,
                                                  **load_kwargs)
    _finish_multimodal_weights(model, info, model_path, model_base)
    if not (load_8bit or load_4bit):
        model.to(device)
    model.eval()

    tokenizer = AutoTokenizer.from_pretrained(model_base or model_path)
    image_processor = load_image_processor(model_path, config) if model.get_vision_tower() is not None else None
    context_len = getattr(config, "tokenizer_model_max_length", None) or getattr(config, "max_position_embeddings", 2048)
    logger.info("Loaded %s from %s (%s, %s, attention %s)", model_class.__name__, model_path, device, dtype, attn)
    return tokenizer, model, image_processor, context_len


class _DropLoadReport(logging.Filter):
    """Drops transformers' table of missing / mismatched weights, but keeps one with conversion errors:
    transformers then raises "look at the above report", which must be there to read."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "LOAD REPORT" not in message or "CONVERSION" in message


@contextmanager
def _without_load_report():
    """transformers logs a table of missing / mismatched weights; `_finish_multimodal_weights`
    handles each case itself (loads the tower, or raises one clear error), so the table is noise."""
    transformers_logger, report_filter = logging.getLogger("transformers.modeling_utils"), _DropLoadReport()
    transformers_logger.addFilter(report_filter)
    try:
        yield
    finally:
        transformers_logger.removeFilter(report_filter)


def _finish_multimodal_weights(model, info: dict, model_path: str, model_base: str | None) -> None:
    """Fill in what the weights file did not carry: a stage-1 projector file, the tower's own weights."""
    mismatched = sorted(info.get("mismatched_keys", []))
    if mismatched:
        name, stored, expected = mismatched[0]
        raise ValueError(
            f"The checkpoint at {model_base or model_path} holds {len(mismatched)} weight(s) of another shape than "
            f"its config.json builds, e.g. {name}: {list(stored)} in the file, {list(expected)} in the model. The "
            "weights and config.json come from different models; put the checkpoint's own config.json back."
        )
    missing = set(info.get("missing_keys", []))
    if model_base is not None:
        projector_file = os.path.join(model_path, "mm_projector.bin")
        if not os.path.isfile(projector_file):
            raise ValueError(f"model_base was given but {projector_file} does not exist.")
        missing -= load_mm_projector_weights(model, projector_file)
    tower = model.get_vision_tower()
    if tower is not None and any(k.startswith(TOWER_PREFIXES) for k in missing):
        tower.load_pretrained_weights()
        missing = {k for k in missing if not k.startswith(TOWER_PREFIXES)}
    if missing:
        raise ValueError(
            f"The checkpoint at {model_base or model_path} lacks {len(missing)} weight(s) the model needs, e.g. "
            f"{sorted(missing)[:5]}. Is it the right checkpoint for this config?"
        )
    unexpected = info.get("unexpected_keys", [])
    if unexpected:
        raise ValueError(
            f"The checkpoint at {model_base or model_path} has {len(unexpected)} weight(s) this model does not use, "
            f"e.g. {sorted(unexpected)[:5]}. Is the config's model type / proxyv setting right?"
        )
