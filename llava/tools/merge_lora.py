"""Merge a LoRA run's output into one full checkpoint (LLaVA's `scripts/merge_lora_weights.py`).

    python -m llava.tools.merge_lora --model-path LORA_DIR --model-base BASE --save-model-path OUT

`LORA_DIR` is what `llava/train/train.py --lora_enable True` wrote (recognised by its
`adapter_config.json`); `BASE` is the model that run started from (the language model, or the full
LLaVA checkpoint a task LoRA adapted). `OUT` gets the merged weights, the LLaVA config (ProxyV keys
included), the tokenizer and the image processor settings: the CLI, `run_llava`, `model_vqa` and
lmms-eval load it with no model base.
"""

import argparse
import logging
import os
import sys

import torch

from llava.errors import UsageError, read_json_file, require_output_folder, require_path, run_main
from llava.model.builder import load_pretrained_model, resolve_dtype
from llava.model.lora_weights import is_lora_folder

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Merge a LoRA adapter and its fully trained weights into a full checkpoint.")
    parser.add_argument("--model-path", required=True, help="the LoRA run's output folder (with adapter_config.json)")
    parser.add_argument("--model-base", required=True, help="the model the LoRA run started from")
    parser.add_argument("--save-model-path", required=True, help="output folder (new or empty)")
    parser.add_argument("--torch-dtype", default="auto", help="dtype of the merged weights: auto (the one the "
                        "LoRA run trained in), float32, bfloat16 or float16")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def _check_paths(args) -> None:
    require_path(args.model_path, "--model-path", "dir")
    if not is_lora_folder(args.model_path):
        raise UsageError(f"--model-path {args.model_path} has no adapter_config.json, so it is not a LoRA output; "
                         "point it at the folder a --lora_enable True run wrote.")
    save_path = require_output_folder(args.save_model_path, "--save-model-path", "a new folder")
    if save_path.is_dir() and any(save_path.iterdir()):
        raise UsageError(f"--save-model-path {args.save_model_path} exists and is not an empty folder; give a new one.")


def _trained_dtype(lora_dir: str) -> torch.dtype:
    """The precision the LoRA run trained in (its config.json's dtype), float32 when it names none."""
    config = read_json_file(os.path.join(lora_dir, "config.json"), "LoRA run config")
    stored = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    return resolve_dtype(stored, "cpu") if stored in ("float32", "bfloat16", "float16") else torch.float32


def main(argv=None) -> int:
    """Load base + non-LoRA weights + adapter, merge, save; problems raise `UserError`s (see `run_main`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    _check_paths(args)
    dtype = _trained_dtype(args.model_path) if args.torch_dtype == "auto" else resolve_dtype(args.torch_dtype, "cpu")
    logger.info("Merging in %s on CPU", dtype)
    tokenizer, model, image_processor, _ = load_pretrained_model(args.model_path, args.model_base, device="cpu",
                                                                 torch_dtype=dtype)
    os.makedirs(args.save_model_path, exist_ok=True)
    model.save_pretrained(args.save_model_path)
    tokenizer.save_pretrained(args.save_model_path)
    if image_processor is not None:
        image_processor.save_pretrained(args.save_model_path)
    logger.info("Wrote the merged model to %s", args.save_model_path)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
