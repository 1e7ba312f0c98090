"""`load_pretrained_model`: the loader LLaVA users and lmms-eval call.

The model class comes from the checkpoint's config (its `model_type` and `proxyv` key), never from
the path's name. Returns `(tokenizer, model, image_processor, context_len)` like LLaVA.

A local checkpoint's files are checked before anything is loaded, so that a damaged or missing file
is named (transformers' and safetensors' own errors often name neither the file nor the fix): a path
that does not exist or is not a checkpoint is a `UsageError`, a checkpoint whose config, weights,
shards, tokenizer or projector file is damaged or missing a `DamagedInputError` (see `llava.errors`).
"""

import logging
import os
import zipfile
from contextlib import contextmanager

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.errors import (
    DamagedInputError,
    UsageError,
    UserError,
    one_line,
    read_json_file,
    read_safetensors_header,
)

from .backends import ATTN_IMPLEMENTATIONS, mask_limits_flash
from .checkpoint_names import TOWER_PREFIXES
from .lora_weights import (
    check_adapter_fits,
    check_base_matches,
    check_lora_folder,
    is_lora_folder,
    load_non_lora_trainables,
    merge_lora_adapter,
    without_quantization,
)
from .masks import FLEX_ATTENTION
from .model_registry import causal_lm_class_for_config, check_model_type, config_for_class, read_llava_config
from .projector_weights import load_mm_projector_weights

logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> str:
    """`auto` -> CUDA when present, else CPU."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{device}' was asked for but CUDA is not available here; use --device cpu.")
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
        raise UsageError(f"Unknown torch_dtype '{torch_dtype}'. Known: {', '.join(names)}.")
    return names[torch_dtype]


def resolve_attn_implementation(requested: str | None, config) -> str:
    """The attention backend to load with; flash-attention only where it is installed and exact."""
    requested = requested or "sdpa"
    if requested not in ATTN_IMPLEMENTATIONS:
        raise UsageError(f"Unknown attn_implementation '{requested}'. Known: {', '.join(ATTN_IMPLEMENTATIONS)}.")
    if requested != "flash_attention_2":
        return requested
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        logger.warning("flash-attn is not installed (pip install 'proxyv[flash]'); using sdpa instead.")
        return "sdpa"
    reason = mask_limits_flash(config)
    if reason:
        logger.warning("flash-attention cannot run this model (%s), so %s is used.", reason, FLEX_ATTENTION)
        return FLEX_ATTENTION
    return requested


def load_image_processor(model_path: str, config):
    """The CLIP processor (PIL backend, as LLaVA-NeXT used) saved with the model or with its tower."""
    if os.path.isfile(os.path.join(model_path, "preprocessor_config.json")):
        return CLIPImageProcessorPil.from_pretrained(model_path)
    tower = getattr(config, "mm_vision_tower", None)
    if not tower:
        return None
    return CLIPImageProcessorPil.from_pretrained(tower)


SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHTS_FILES = ("model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin", BIN_INDEX)
PROJECTOR_FILE = "mm_projector.bin"
# Any one of these makes a tokenizer (with its tokenizer_config.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.tiktoken", "qwen.tiktoken")
# The JSON files the loaders read: each must parse.
CHECKPOINT_JSON_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
                         "special_tokens_map.json", "added_tokens.json", "tokenizer.json", "vocab.json",
                         SAFETENSORS_INDEX, BIN_INDEX)


def _has_any(folder: str, names) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in names)


def _check_model_path(model_path: str) -> bool:
    """A local folder must hold a config; anything else must look like a hub name `org/name`.
    Returns whether `model_path` is a local folder (whose files can be checked)."""
    if os.path.isdir(model_path):
        if not os.path.isfile(os.path.join(model_path, "config.json")):
            if _has_any(model_path, WEIGHTS_FILES):
                raise DamagedInputError(f"checkpoint folder {model_path} has weights but no config.json; copy the "
                                        "checkpoint's config.json back into it (or save the model again).")
            raise UsageError(f"{model_path} has no config.json; point --model-path at a saved checkpoint folder.")
        return True
    return _is_local_folder(model_path, "Model path", "give the checkpoint folder")


def _check_base_path(model_base: str) -> bool:
    """`model_base` exists (a folder) or looks like a hub name; returns whether it is a local folder."""
    return _is_local_folder(model_base, "model_base", "give the language model's folder")


def _is_local_folder(path: str, label: str, file_fix: str) -> bool:
    """True for a folder, False for a hub-like name `org/name`; a file, or a local path that is not
    there, is a UsageError starting with `label`."""
    if os.path.isdir(path):
        return True
    if os.path.exists(path):
        raise UsageError(f"{label} {path} is a file; {file_fix}.")
    if path.startswith(("/", ".", "~")) or path.count("/") != 1:
        raise UsageError(f"{label} {path} does not exist (and is not a hub name like 'org/name').")
    return False


def _check_json_files(folder: str) -> None:
    """Every JSON file the loaders read parses; config.json is an object."""
    for name in CHECKPOINT_JSON_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            value = read_json_file(path, "checkpoint file")
            if name == "config.json" and not isinstance(value, dict):
                raise DamagedInputError(f"checkpoint file {path} is not a JSON object of config values; restore it "
                                        "from the original.")


def _index_shards(folder: str, index_name: str) -> list[str]:
    """The shard files a sharded checkpoint's index names, each of which must be there."""
    index_path = os.path.join(folder, index_name)
    index = read_json_file(index_path, "weights index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DamagedInputError(f"weights index {index_path} has no weight_map; restore it from the original.")
    shards = sorted(set(map(str, weight_map.values())))
    missing = [shard for shard in shards if not os.path.isfile(os.path.join(folder, shard))]
    if missing:
        raise DamagedInputError(f"weights index {index_path} names {len(missing)} shard(s) of {len(shards)} that are "
                                f"missing from {folder}: {', '.join(missing[:3])}; copy them back (or save the model "
                                "again).")
    return shards


def _check_weights(folder: str, model_base_given: bool) -> None:
    """The weights are there and every safetensors file (shard or not) is whole."""
    if not _has_any(folder, WEIGHTS_FILES):
        if not model_base_given and os.path.isfile(os.path.join(folder, PROJECTOR_FILE)):
            raise UsageError(f"{folder} holds only {PROJECTOR_FILE} (a stage-1 output), no full weights; pass "
                             "model_base (--model-base) naming the language model it was trained on.")
        where = f"model_base {folder}" if model_base_given else f"checkpoint folder {folder}"
        raise DamagedInputError(f"{where} has no weights file ({', '.join(WEIGHTS_FILES)}); copy the weights back "
                                "(or save the model again).")
    safetensors, torch_files = set(), set()
    if os.path.isfile(os.path.join(folder, SAFETENSORS_INDEX)):
        safetensors.update(_index_shards(folder, SAFETENSORS_INDEX))
    elif os.path.isfile(os.path.join(folder, BIN_INDEX)):
        torch_files.update(_index_shards(folder, BIN_INDEX))
    elif not os.path.isfile(os.path.join(folder, "model.safetensors")):
        torch_files.add("pytorch_model.bin")
    safetensors.update(name for name in os.listdir(folder) if name.endswith(".safetensors"))
    for name in sorted(safetensors):
        read_safetensors_header(os.path.join(folder, name))
    for name in sorted(torch_files):
        _check_torch_file_looks_whole(os.path.join(folder, name), "weights file", "restore it (or save the model again)")


def _check_tokenizer(folder: str, model_base_given: bool) -> None:
    if _has_any(folder, TOKENIZER_FILES):
        return
    if model_base_given:
        raise DamagedInputError(f"model_base {folder} lacks a tokenizer (no tokenizer.json, tokenizer.model or vocab "
                                "files), and with model_base the tokenizer is read from there: give the language "
                                "model folder the checkpoint was trained on, with its tokenizer files.")
    raise DamagedInputError(f"checkpoint folder {folder} lacks a tokenizer (no tokenizer.json, tokenizer.model or "
                            "vocab files); copy the tokenizer files of the language model it was trained from into it "
                            "(training saves them with the model).")


def _check_projector_file(model_path: str) -> None:
    """With model_base, `model_path` is a stage-1 folder that must hold mm_projector.bin."""
    projector_file = os.path.join(model_path, PROJECTOR_FILE)
    if os.path.isfile(projector_file):
        _check_torch_file_looks_whole(projector_file, "projector weights file", "point --model-path at the folder "
                                      f"whose {PROJECTOR_FILE} stage 1 wrote")
        return
    if _has_any(model_path, WEIGHTS_FILES):
        raise UsageError(f"model_base was given but {projector_file} does not exist: {model_path} holds full weights, "
                         "so load it without model_base (--model-base).")
    raise DamagedInputError(f"model_base was given but {projector_file} does not exist; point --model-path at the "
                            f"stage-1 output folder that holds {PROJECTOR_FILE}.")


def _check_torch_file_looks_whole(path: str, what: str, fix: str) -> None:
    """A cheap look before anything is loaded: `torch.save` writes a zip archive (older torch a pickle);
    anything else (emptied, cut short, text) fails now, not after minutes of loading."""
    with open(path, "rb") as handle:
        head = handle.read(1)
    if not (head == b"\x80" or zipfile.is_zipfile(path)):
        raise DamagedInputError(f"{what} {path} is not a readable torch checkpoint (emptied, cut short or another kind "
                                f"of file); {fix}.")


def check_checkpoint_files(model_path: str, model_base: str | None = None) -> None:
    """Check a checkpoint's files before loading it, naming the one that is missing or damaged.

    Local folders only (hub names are left to transformers): JSON files parse, the weights (those of
    `model_base` when given) are there, every shard an index names exists and every safetensors file
    is whole, a tokenizer is there (`model_base`'s when given) and, with `model_base`, the stage-1
    `mm_projector.bin` or a LoRA folder's adapter files. The checks read file headers only.
    """
    path_is_local = _check_model_path(model_path)
    base_is_local = model_base is not None and _check_base_path(model_base)
    if path_is_local:
        _check_json_files(model_path)
        if is_lora_folder(model_path):
            check_lora_folder(model_path, model_base)
        elif model_base is not None:
            _check_projector_file(model_path)
    if base_is_local:
        _check_json_files(model_base)
    # The weights and the tokenizer come from model_base when it is given.
    files_folder, files_local = (model_base, base_is_local) if model_base is not None else (model_path, path_is_local)
    if files_local:
        _check_weights(files_folder, model_base is not None)
        _check_tokenizer(files_folder, model_base is not None)


def read_customized_config(customized_config):
    """`customized_config` as a config object: given one, it is returned; given a path (lmms-eval's
    `--model_args customized_config=my_config.json` passes the string, which LLaVA-NeXT's builder
    hands to `from_pretrained(config=...)`), the config JSON file, or folder with a config.json, is read."""
    if not isinstance(customized_config, (str, os.PathLike)):
        return customized_config
    path = os.path.expanduser(os.fspath(customized_config))
    if not os.path.exists(path):
        raise UsageError(f"customized_config {path} does not exist; give a config JSON file or a folder with "
                         "a config.json.")
    read_json_file(os.path.join(path, "config.json") if os.path.isdir(path) else path, "customized_config")
    with _model_type_is_usage_error():
        return read_llava_config(path)


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
    model to attach the projector to; for a LoRA folder (one with `adapter_config.json`), the model the
    LoRA run started from (the language model, or a full LLaVA checkpoint), onto which the fully
    trained weights and the merged adapter go.
    """
    kwargs.pop("multimodal", None)  # lmms-eval passes it; every model here is multimodal
    if kwargs.pop("use_flash_attention_2", False):  # older LLaVA / lmms-eval spelling
        attn_implementation = "flash_attention_2"
    customized_config = read_customized_config(kwargs.pop("customized_config", None))
    check_checkpoint_files(model_path, model_base)
    if isinstance(device_map, str) and device_map != "auto":
        device = device_map  # "cpu", "cuda", "cuda:1": one device, as LLaVA's builder means it
    device = resolve_device(device)
    if (load_8bit or load_4bit) and not device.startswith("cuda"):
        raise UsageError("--load-8bit/--load-4bit need a CUDA GPU (bitsandbytes); on CPU load in full precision.")
    dtype = resolve_dtype(torch_dtype, device)
    with _model_type_is_usage_error():
        check_model_type(model_path)
    if customized_config is not None:
        config = customized_config
    else:
        with _checkpoint_cannot_run(model_path):  # a config value this package refuses (layout, tower, ...)
            config = read_llava_config(model_path)
    for key, value in (overwrite_config or {}).items():
        setattr(config, key, value)
    attn = resolve_attn_implementation(attn_implementation, config)
    with _model_type_is_usage_error():
        model_class = causal_lm_class_for_config(config)
    config = config_for_class(config, model_class)
    lora = os.path.isdir(model_path) and is_lora_folder(model_path)
    if lora:
        config = without_quantization(config)  # a QLoRA run's record of its training copy
        check_base_matches(config, model_path, model_base)

    # Shape mismatches are reported by `_finish_multimodal_weights` in one line, not by a RuntimeError.
    load_kwargs = {"dtype": dtype, "attn_implementation": attn, "ignore_mismatched_sizes": True, **kwargs}
    if load_8bit or load_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=load_8bit, load_in_4bit=load_4bit)
    weights_path = model_base or model_path
    try:
        with _without_load_report(), _checkpoint_cannot_run(model_path):  # e.g. a SigLIP vision tower
            model, info = model_class.from_pretrained(weights_path, config=config, output_loading_info=True,
                                                      **load_kwargs)
    except SafetensorError as error:  # a file whose header is whole but whose tensors are not
        raise DamagedInputError(f"the weights in {weights_path} cannot be read ({one_line(error)[:200]}); restore "
                                "them (or save the model again).") from error
    _finish_multimodal_weights(model, info, model_path, model_base, lora)
    if lora:
        check_adapter_fits(model, model_path)
        model = merge_lora_adapter(model, model_path)
    if not (load_8bit or load_4bit):
        model.to(device)
    model.eval()

    # A LoRA run saves its tokenizer with the adapter; a stage-1 folder has none of its own.
    own_tokenizer = lora and _has_any(model_path, TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(model_path if own_tokenizer else (model_base or model_path))
    image_processor = load_image_processor(model_path, config) if model.get_vision_tower() is not None else None
    context_len = getattr(config, "tokenizer_model_max_length", None) or getattr(config, "max_position_embeddings", 2048)
    logger.info("Loaded %s from %s (%s, %s, attention %s)", model_class.__name__, model_path, device, dtype, attn)
    return tokenizer, model, image_processor, context_len


@contextmanager
def _model_type_is_usage_error():
    """An unknown model type means the path names the wrong kind of model: a `UsageError`."""
    try:
        yield
    except UserError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from error


@contextmanager
def _checkpoint_cannot_run(model_path: str):
    """Our own refusals of a checkpoint's config (a ValueError naming the key and value) become a
    `DamagedInputError` naming the checkpoint: the file exists but this package cannot run it."""
    try:
        yield
    except UserError:
        raise
    except ValueError as error:
        raise DamagedInputError(f"{model_path}: {one_line(error)}") from error


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


def _finish_multimodal_weights(model, info: dict, model_path: str, model_base: str | None, lora: bool) -> None:
    """Fill in what the weights file did not carry: a stage-1 projector file or a LoRA run's fully
    trained weights, the tower's own weights."""
    mismatched = sorted(info.get("mismatched_keys", []))
    if mismatched and lora:
        name, stored, expected = mismatched[0]
        raise UsageError(f"model_base {model_base} is another size than the model the LoRA run in {model_path} trained: "
                         f"{name} is {list(stored)} there, {list(expected)} in the run's model. Give the language "
                         "model the LoRA run started from.")
    if mismatched:
        name, stored, expected = mismatched[0]
        raise DamagedInputError(
            f"The checkpoint at {model_base or model_path} holds {len(mismatched)} weight(s) of another shape than "
            f"its config.json builds, e.g. {name}: {list(stored)} in the file, {list(expected)} in the model. The "
            "weights and config.json come from different models; put the checkpoint's own config.json back."
        )
    missing = set(info.get("missing_keys", []))
    if lora:
        missing -= load_non_lora_trainables(model, model_path)
    elif model_base is not None:
        projector_file = os.path.join(model_path, PROJECTOR_FILE)
        if not os.path.isfile(projector_file):
            raise UsageError(f"model_base was given but {projector_file} does not exist; point --model-path at the "
                             f"stage-1 output folder that holds {PROJECTOR_FILE}.")
        missing -= load_mm_projector_weights(model, projector_file)
    tower = model.get_vision_tower()
    if tower is not None and any(k.startswith(TOWER_PREFIXES) for k in missing):
        tower.load_pretrained_weights()
        missing = {k for k in missing if not k.startswith(TOWER_PREFIXES)}
    if missing:
        raise DamagedInputError(
            f"The checkpoint at {model_base or model_path} lacks {len(missing)} weight(s) the model needs, e.g. "
            f"{sorted(missing)[:5]}. Is it the right checkpoint for this config?"
        )
    unexpected = info.get("unexpected_keys", [])
    if unexpected:
        raise DamagedInputError(
            f"The checkpoint at {model_base or model_path} has {len(unexpected)} weight(s) this model does not use, "
            f"e.g. {sorted(unexpected)[:5]}. Is the config's model type / proxyv setting right?"
        )
