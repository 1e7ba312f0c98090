"""Convert an InternLM2 / InternLM2.5 checkpoint into a plain Llama checkpoint.

    python -m llava.tools.convert_internlm2 --src internlm2_5-7b-chat --dst internlm2_5-7b-chat-llama \\
        [--dtype float32|bfloat16|float16] [--force] [--ignore-config-key KEY ...] [--debug]

transformers has no InternLM2 class (InternLM2 ships its modelling code with the weights), but the
architecture is Llama's: RMSNorm, rotary embeddings (Llama's `rotate_half` layout), grouped-query
attention and a SwiGLU feed-forward. Only the names differ and the query/key/value projections are
one packed matrix, so the conversion is a renaming plus one split:

    model.tok_embeddings.weight              -> model.embed_tokens.weight
    output.weight                            -> lm_head.weight
    model.norm.weight                        -> model.norm.weight
    model.layers.N.attention.wqkv.{weight,bias} -> self_attn.{q,k,v}_proj.{weight,bias} (split below)
    model.layers.N.attention.wo.{weight,bias}   -> self_attn.o_proj.{weight,bias}
    model.layers.N.feed_forward.w1 / w3 / w2 -> mlp.gate_proj / up_proj / down_proj
    model.layers.N.attention_norm            -> input_layernorm
    model.layers.N.ffn_norm                  -> post_attention_layernorm

`wqkv` rows come in `num_key_value_heads` groups; group j holds the `num_attention_heads //
num_key_value_heads` query heads that share key/value head j, then key head j, then value head j,
each `head_dim` rows. The query heads are therefore numbered group-major, which is the order
Llama's `repeat_kv` expects (query head i reads key/value head i // group size), so no head needs
reordering and, since both use the same rotary layout, no rows inside a head are permuted.

Config: the sizes, `rms_norm_eps`, token ids, `tie_word_embeddings` and `max_position_embeddings`
carry over; `bias` becomes `attention_bias` (InternLM2's bias sits on wqkv and wo only, as Llama's
does on q/k/v/o); `rope_theta` and `rope_scaling` ({"type": "dynamic" | "linear", "factor": F})
become transformers 5's `rope_parameters` ({"rope_type", "factor", "rope_theta"}), whose dynamic-NTK
and linear formulas are the ones InternLM2's code uses. Keys this converter does not know, and
values it cannot map, are refused by name (`--ignore-config-key` skips a key that does not change
the model); `attn_implementation` is a run-time choice and is dropped.

Tokenizer: InternLM2's tokenizer is its own sentencepiece class, shipped as remote code. The tokenizer
files (tokenizer.model, tokenizer_config.json, special_tokens_map.json, tokenization_internlm2*.py,
and tokenizer.json / added_tokens.json when present) and generation_config.json are copied unchanged,
so the tokenizer and chat template stay exactly the original's: load it with
`AutoTokenizer.from_pretrained(DST, trust_remote_code=True)` (needs the `sentencepiece` package).
The converter deliberately does not build a fast tokenizer: nothing here can check that one would
tokenize exactly as InternLM2's does.

Exit status: 0 done; 2 a usage problem (missing option, --src not a folder, --dst not empty without
--force); 1 a checkpoint it cannot convert (not model_type internlm2, missing or unexpected weights,
wrong shapes, unsupported config values). Problems are one `error: ...` line on stderr; --debug
shows the traceback instead. The two kinds are the project's `llava.errors.UsageError` and
`DamagedInputError` (as `CheckpointError`), printed by `llava.errors.run_main` like every entry point's.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from llava.errors import DamagedInputError, UsageError, require_output_folder, run_main

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# InternLM2Config's own defaults, used (as InternLM2's code would) when config.json leaves a key out.
DEFAULTS = {
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
    "hidden_act": "silu", "pretraining_tp": 1, "attn_implementation": None,
}
OTHER_HANDLED_KEYS = {"model_type", "num_key_value_heads", "bias", "torch_dtype", "dtype"}
# Keys that do not change the weights or the forward pass (bookkeeping, generation defaults that old
# transformers versions wrote into config.json).
IGNORED_KEYS = {
    "architectures", "auto_map", "transformers_version", "_name_or_path", "initializer_range", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript", "use_bfloat16", "id2label",
    "label2id", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder",
    "add_cross_attention", "tie_encoder_decoder", "pruned_heads", "tf_legacy_loss", "finetuning_task",
    "tokenizer_class", "prefix", "task_specific_params", "sep_token_id", "decoder_start_token_id",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "cross_attention_hidden_size",
}
ROPE_TYPES = ("dynamic", "linear")  # InternLM2's rope_scaling types; transformers 5 uses the same names
ATTN_IMPLEMENTATIONS = (None, "eager", "sdpa", "flash_attention_2")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
IGNORED_TENSOR_SUFFIX = ".rotary_emb.inv_freq"  # a buffer some old saves include; recomputed from config


__all__ = ["CheckpointError", "UsageError", "convert", "main"]


class CheckpointError(DamagedInputError):
    """The source checkpoint cannot be converted (exit 1); `UsageError` (exit 2): the command line is wrong."""


@dataclass(frozen=True)
class Sizes:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def group(self) -> int:  # query heads per key/value head
        return self.heads // self.kv_heads


# ----------------------------------------------------------------------------- config


def read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{src} has no config.json; point --src at an InternLM2 checkpoint folder.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: JSON syntax, or bytes that are not UTF-8
        raise CheckpointError(f"{path} cannot be read as JSON ({error}).") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object.")
    model_type = config.get("model_type")
    if model_type != "internlm2":
        hint = " (it is already a Llama checkpoint)" if model_type == "llama" else ""
        raise CheckpointError(f"{path}: model_type is {model_type!r}, not 'internlm2'{hint}; "
                              "this tool converts InternLM2 / InternLM2.5 checkpoints only.")
    return config


def check_config(config: dict, path: Path, ignored: set[str]) -> None:
    """Refuse keys this converter does not know and values it cannot map, naming the key."""
    known = set(REQUIRED_KEYS) | set(DEFAULTS) | OTHER_HANDLED_KEYS | IGNORED_KEYS | ignored
    for key in config:
        if key not in known:
            raise CheckpointError(f"{path}: key {key!r} is unknown to this converter; if it does not change "
                                  f"the model, pass --ignore-config-key {key}.")
    for key in REQUIRED_KEYS:
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise CheckpointError(f"{path}: {key} must be a positive integer, got {config.get(key)!r}.")
    setting = {**DEFAULTS, **config}
    if setting["hidden_act"] != "silu":
        raise CheckpointError(f"{path}: hidden_act {setting['hidden_act']!r} is not supported (only 'silu').")
    if setting["attn_implementation"] not in ATTN_IMPLEMENTATIONS:
        raise CheckpointError(f"{path}: attn_implementation {setting['attn_implementation']!r} is unknown; "
                              f"expected one of eager, sdpa, flash_attention_2 or none.")
    if not isinstance(setting["pretraining_tp"], int) or setting["pretraining_tp"] < 1:
        raise CheckpointError(f"{path}: pretraining_tp must be a positive integer, got {setting['pretraining_tp']!r}.")
    if config.get("bias") not in (None, True, False):
        raise CheckpointError(f"{path}: bias must be true or false, got {config['bias']!r}.")


def read_sizes(config: dict, path: Path) -> Sizes:
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    sizes = Sizes(config["vocab_size"], config["hidden_size"], config["intermediate_size"],
                  config["num_hidden_layers"], config["num_attention_heads"], kv_heads)
    if sizes.hidden % sizes.heads:
        raise CheckpointError(f"{path}: hidden_size {sizes.hidden} is not a multiple of "
                              f"num_attention_heads {sizes.heads}.")
    if not isinstance(kv_heads, int) or sizes.heads % kv_heads:
        raise CheckpointError(f"{path}: num_attention_heads {sizes.heads} is not a multiple of "
                              f"num_key_value_heads {kv_heads!r}.")
    return sizes


def rope_parameters(config: dict, path: Path) -> dict:
    """InternLM2's rope_theta + rope_scaling as transformers 5's `rope_parameters`."""
    theta = config.get("rope_theta", DEFAULTS["rope_theta"])
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise CheckpointError(f"{path}: rope_theta must be a positive number, got {theta!r}.")
    scaling = config.get("rope_scaling")
    if scaling is None:
        return {"rope_type": "default", "rope_theta": float(theta)}
    if not isinstance(scaling, dict):
        raise CheckpointError(f"{path}: rope_scaling must be an object or null, got {scaling!r}.")
    rope_type = scaling.get("type", scaling.get("rope_type"))
    if rope_type not in ROPE_TYPES:
        raise CheckpointError(f"{path}: rope_scaling type {rope_type!r} cannot be mapped; supported: "
                              f"{', '.join(ROPE_TYPES)}.")
    for key in scaling:
        if key not in ("type", "rope_type", "factor"):
            raise CheckpointError(f"{path}: rope_scaling.{key} is not supported (only type and factor).")
    factor = scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise CheckpointError(f"{path}: rope_scaling.factor must be a number >= 1, got {factor!r}.")
    return {"rope_type": rope_type, "factor": float(factor), "rope_theta": float(theta)}


def output_dtype(choice: str | None, config: dict, tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """--dtype, else the source's torch_dtype, else the dtype of its embedding."""
    if choice is not None:
        return DTYPES[choice]
    stored = config.get("torch_dtype", config.get("dtype"))
    if stored in DTYPES:
        return DTYPES[stored]
    return tensors["model.tok_embeddings.weight"].dtype


def llama_config(config: dict, path: Path, sizes: Sizes, bias: bool, dtype: torch.dtype):
    from huggingface_hub.errors import StrictDataclassError
    from transformers import LlamaConfig

    setting = {**DEFAULTS, **config}
    try:
        return LlamaConfig(
            vocab_size=sizes.vocab, hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
            num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
            head_dim=sizes.head_dim, hidden_act="silu", max_position_embeddings=setting["max_position_embeddings"],
            rms_norm_eps=setting["rms_norm_eps"], rope_parameters=rope_parameters(config, path),
            tie_word_embeddings=bool(setting["tie_word_embeddings"]), bos_token_id=setting["bos_token_id"],
            eos_token_id=setting["eos_token_id"], pad_token_id=setting["pad_token_id"],
            attention_bias=bias, mlp_bias=False, architectures=["LlamaForCausalLM"],
            dtype=str(dtype).removeprefix("torch."),
        )
    except (TypeError, ValueError, StrictDataclassError) as error:  # transformers' own checks of a value
        raise CheckpointError(f"{path}: a value cannot be used in a Llama config: {error}") from error


# ----------------------------------------------------------------------------- reading weights


def weight_files(src: Path) -> list[Path]:
    """The weight files, safetensors preferred; an index json names the shards."""
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        index = src / index_name
        if index.is_file():
            return shards_from_index(index)
        files = sorted(src.glob(pattern))
        if files:
            return files
    raise CheckpointError(f"{src} has no weights: expected *.safetensors or pytorch_model*.bin files.")


def shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index} is not a weight index (no readable weight_map): {error}") from error
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{index} lists shard {file.name}, which is missing from {index.parent}.")
    return files


def load_file(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            return load_safetensors(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors / pickle raise many kinds for a damaged file
        raise CheckpointError(f"{file} cannot be read as a weight file ({type(error).__name__}: {error}).") from error


def read_weights(src: Path) -> dict[str, torch.Tensor]:
    files = weight_files(src)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(file).items():
            if name in tensors:
                raise CheckpointError(f"{file}: weight {name} also appears in another file.")
            if not name.endswith(IGNORED_TENSOR_SUFFIX):
                tensors[name] = tensor
    logger.info("Read %d tensors from %d file(s) in %s", len(tensors), len(files), src)
    return tensors


# ----------------------------------------------------------------------------- checking and converting


def expected_shapes(sizes: Sizes, bias: bool, with_output: bool) -> dict[str, tuple[int, ...]]:
    """InternLM2's weight names and shapes for these sizes."""
    qkv_rows = (sizes.heads + 2 * sizes.kv_heads) * sizes.head_dim
    shapes = {"model.tok_embeddings.weight": (sizes.vocab, sizes.hidden), "model.norm.weight": (sizes.hidden,)}
    if with_output:
        shapes["output.weight"] = (sizes.vocab, sizes.hidden)
    for i in range(sizes.layers):
        layer = f"model.layers.{i}."
        shapes[layer + "attention.wqkv.weight"] = (qkv_rows, sizes.hidden)
        shapes[layer + "attention.wo.weight"] = (sizes.hidden, sizes.heads * sizes.head_dim)
        if bias:
            shapes[layer + "attention.wqkv.bias"] = (qkv_rows,)
            shapes[layer + "attention.wo.bias"] = (sizes.hidden,)
        for name in ("w1", "w3"):
            shapes[layer + f"feed_forward.{name}.weight"] = (sizes.intermediate, sizes.hidden)
        shapes[layer + "feed_forward.w2.weight"] = (sizes.hidden, sizes.intermediate)
        shapes[layer + "attention_norm.weight"] = (sizes.hidden,)
        shapes[layer + "ffn_norm.weight"] = (sizes.hidden,)
    return shapes


def has_bias(config: dict, tensors: dict[str, torch.Tensor]) -> bool:
    """config's `bias`; when config.json leaves it out, whether the weights carry wqkv biases."""
    if config.get("bias") is not None:
        return bool(config["bias"])
    found = "model.layers.0.attention.wqkv.bias" in tensors
    logger.info("config.json has no 'bias'; the weights say bias=%s", found)
    return found


def check_weights(tensors: dict[str, torch.Tensor], sizes: Sizes, bias: bool, tied: bool, src: Path) -> None:
    """Every expected weight present with its shape, nothing else (output.weight optional when tied)."""
    shapes = expected_shapes(sizes, bias, with_output=not tied or "output.weight" in tensors)
    for name, shape in shapes.items():
        if name not in tensors:
            raise CheckpointError(f"{src}: weight {name} is missing (config.json: {sizes.layers} layers, "
                                  f"bias={str(bias).lower()}).")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{src}: weight {name} has shape {list(tensors[name].shape)}, "
                                  f"config.json implies {list(shape)}.")
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise CheckpointError(f"{src}: unexpected weight(s) {shown}; not an InternLM2 layout this tool knows.")
    if tied and "output.weight" in tensors and not torch.equal(tensors["output.weight"],
                                                               tensors["model.tok_embeddings.weight"]):
        raise CheckpointError(f"{src}: output.weight differs from model.tok_embeddings.weight although "
                              "config.json has tie_word_embeddings true; set it to false.")


def split_wqkv(wqkv: torch.Tensor, sizes: Sizes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed wqkv weight [(heads + 2 kv_heads) * d, hidden] (or bias [(heads + 2 kv_heads) * d]) -> q, k, v."""
    rest = wqkv.shape[1:]  # (hidden,) for the weight, () for the bias
    # [kv_heads, group + 2, d, *rest]: per KV group, `group` query heads, then its key head, then its value head
    grouped = wqkv.reshape(sizes.kv_heads, sizes.group + 2, sizes.head_dim, *rest)
    q = grouped[:, : sizes.group].reshape(sizes.heads * sizes.head_dim, *rest)  # [heads * d, *rest], group-major
    k = grouped[:, sizes.group].reshape(sizes.kv_heads * sizes.head_dim, *rest)  # [kv_heads * d, *rest]
    v = grouped[:, sizes.group + 1].reshape(sizes.kv_heads * sizes.head_dim, *rest)  # [kv_heads * d, *rest]
    return q.contiguous(), k.contiguous(), v.contiguous()


def convert_layer(tensors: dict[str, torch.Tensor], i: int, sizes: Sizes, bias: bool) -> dict[str, torch.Tensor]:
    """Layer i's InternLM2 tensors (popped from `tensors`) under Llama's names."""
    src, dst = f"model.layers.{i}.", f"model.layers.{i}."
    out = {}
    for kind in ("weight", "bias") if bias else ("weight",):
        q, k, v = split_wqkv(tensors.pop(f"{src}attention.wqkv.{kind}"), sizes)
        out.update({f"{dst}self_attn.q_proj.{kind}": q, f"{dst}self_attn.k_proj.{kind}": k,
                    f"{dst}self_attn.v_proj.{kind}": v})
        out[f"{dst}self_attn.o_proj.{kind}"] = tensors.pop(f"{src}attention.wo.{kind}")  # [hidden, heads * d]
    renames = {"feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w3.weight": "mlp.up_proj.weight",
               "feed_forward.w2.weight": "mlp.down_proj.weight", "attention_norm.weight": "input_layernorm.weight",
               "ffn_norm.weight": "post_attention_layernorm.weight"}
    for old, new in renames.items():
        out[dst + new] = tensors.pop(src + old)
    return out


def convert_weights(tensors: dict[str, torch.Tensor], sizes: Sizes, bias: bool, tied: bool,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """InternLM2 names -> Llama names, cast to `dtype`; empties `tensors` as it goes to bound memory."""
    out = {"model.embed_tokens.weight": tensors.pop("model.tok_embeddings.weight"),  # [vocab, hidden]
           "model.norm.weight": tensors.pop("model.norm.weight")}  # [hidden]
    output = tensors.pop("output.weight", None)  # [vocab, hidden]; absent or equal to the embedding when tied
    if not tied:
        out["lm_head.weight"] = output
    for i in range(sizes.layers):
        out.update(convert_layer(tensors, i, sizes, bias))
    for name in out:  # one tensor at a time, so a cast holds at most one extra copy
        out[name] = out[name].to(dtype)
    return out


# ----------------------------------------------------------------------------- writing


def write_llama(weights: dict[str, torch.Tensor], config, dst: Path) -> None:
    """Save a LlamaForCausalLM holding `weights` (no random init: the model is built on the meta device)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    missing = [name for name in missing if not (config.tie_word_embeddings and name == "lm_head.weight")]
    if missing or unexpected:  # a bug here, not in the user's checkpoint
        raise RuntimeError(f"converted names do not match Llama's: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Tokenizer files, InternLM2's tokenizer code and generation_config.json, copied unchanged."""
    names = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    names += sorted(path.name for path in src.glob("tokenization_internlm2*.py"))
    if (src / "generation_config.json").is_file():  # InternLM2's (e.g. the chat models' extra eos id)
        names.append("generation_config.json")
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return names


def report_tokenizer(copied: list[str], src: Path, dst: Path) -> None:
    tokenizer_files = [name for name in copied if name != "generation_config.json"]
    if not tokenizer_files:
        logger.warning("No tokenizer files in %s: copy InternLM2's tokenizer files into %s yourself.", src, dst)
        return
    logger.info("Copied %s to %s", ", ".join(copied), dst)
    if not any(name.startswith("tokenization_internlm2") for name in copied):
        logger.warning("No tokenization_internlm2*.py in %s: the copied tokenizer_config.json may point at "
                       "InternLM2's tokenizer code, which then has to be copied too.", src)
    logger.info("The tokenizer is InternLM2's own (remote code, needs sentencepiece): load it with "
                "AutoTokenizer.from_pretrained(%r, trust_remote_code=True).", str(dst))


# ----------------------------------------------------------------------------- command line


def check_paths(src: Path, dst: Path, force: bool) -> None:
    if not src.is_dir():
        raise UsageError(f"--src {src} is not a folder; point it at the InternLM2 checkpoint folder.")
    require_output_folder(dst, "--dst", "a new or empty folder")
    if dst.exists() and dst.resolve() == src.resolve():
        raise UsageError(f"--dst {dst} is the --src folder; choose a new or empty folder.")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise UsageError(f"--dst {dst} is not empty; choose a new or empty folder, or pass --force to write into it.")


def convert(src: Path, dst: Path, dtype: str | None = None, force: bool = False,
            ignore_keys: tuple[str, ...] = ()) -> None:
    """The whole conversion; raises UsageError / CheckpointError for problems the user can fix."""
    check_paths(src, dst, force)
    config = read_config(src)
    config_path = src / "config.json"
    check_config(config, config_path, set(ignore_keys))
    sizes = read_sizes(config, config_path)
    # refuse values Llama's config cannot take before reading gigabytes (bias and dtype settled below)
    llama_config(config, config_path, sizes, bool(config.get("bias")), torch.float32)
    tensors = read_weights(src)
    bias = has_bias(config, tensors)
    tied = bool(config.get("tie_word_embeddings", DEFAULTS["tie_word_embeddings"]))
    check_weights(tensors, sizes, bias, tied, src)
    target_dtype = output_dtype(dtype, config, tensors)
    llama = llama_config(config, config_path, sizes, bias, target_dtype)
    weights = convert_weights(tensors, sizes, bias, tied, target_dtype)
    logger.info("Converted to %d Llama tensors (%d layers, %d query / %d key-value heads, %s, rope %s)",
                len(weights), sizes.layers, sizes.heads, sizes.kv_heads, str(target_dtype).removeprefix("torch."),
                llama.rope_parameters["rope_type"])
    write_llama(weights, llama, dst)
    logger.info("Wrote the Llama checkpoint (config.json, safetensors) to %s", dst)
    report_tokenizer(copy_side_files(src, dst), src, dst)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (usage: python -m llava.tools.convert_internlm2 --src DIR --dst DIR; see --help)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(description="Convert an InternLM2 / InternLM2.5 checkpoint into a Llama checkpoint.")
    parser.add_argument("--src", required=True, type=Path, help="InternLM2 checkpoint folder")
    parser.add_argument("--dst", required=True, type=Path, help="output folder (new or empty)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weight dtype to write (default: the source's torch_dtype)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --dst, replacing same-named files")
    parser.add_argument("--ignore-config-key", action="append", default=[], metavar="KEY",
                        help="skip a config.json key this tool does not know (only if it does not change the model)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """The conversion; problems raise `UsageError` / `CheckpointError` (run it through `run_main`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    convert(args.src, args.dst, args.dtype, args.force, tuple(args.ignore_config_key))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
