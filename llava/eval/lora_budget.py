"""What a stage-2 run trains, and the memory its optimizer needs: LoRA against full fine-tuning.

    python -m llava.eval.lora_budget --model vicuna-7b --proxyv-start-layer 12 --lora-r 128 [--json OUT]

The model (a benchmark preset or a config / checkpoint folder, as `llava.eval.prefill_benchmark`
takes) is built on the meta device, so a 7B or 13B model costs nothing, and wrapped by the same
`llava.train.lora.enable_lora` that training uses, with the stage-2 script's tunable parts
(projector, ProxyV modules, language model). Counted: the parameters that train (LoRA adapters,
fully trained multimodal modules) and the frozen ones. Estimated, per the mixed-precision AdamW
that DeepSpeed runs (bf16 weights and gradients, fp32 master weights and two fp32 moments):
weights 2 bytes per parameter, and 2 + 4 + 8 = 14 bytes per trained parameter for its gradient,
master copy and moments, before ZeRO divides them over GPUs. Activations are not included.
"""

import argparse
import json
import sys
from types import SimpleNamespace

import torch

from llava.errors import UsageError, run_main
from llava.eval.prefill_benchmark import build_model, build_variants
from llava.eval.presets import load_model_spec
from llava.model.lora_weights import is_lora_parameter
from llava.train.lora import enable_lora
from llava.train.tunable import DEFAULT_TUNABLE_PARTS, apply_tunable_parts, parse_tunable_parts

WEIGHT_BYTES = 2  # bf16
TRAINED_EXTRA_BYTES = 2 + 4 + 8  # bf16 gradient, fp32 master weight, fp32 Adam moments


def count_parameters(model) -> dict[str, int]:
    """Parameters in all, trained, and of the trained ones LoRA's and the fully trained modules'."""
    counts = {"total": 0, "trained": 0, "lora": 0, "trained_fully": 0}
    for name, param in model.named_parameters():
        counts["total"] += param.numel()
        if param.requires_grad:
            counts["trained"] += param.numel()
            counts["lora" if is_lora_parameter(name) else "trained_fully"] += param.numel()
    return counts


def budget_row(setting: str, counts: dict[str, int]) -> dict:
    weights = counts["total"] * WEIGHT_BYTES
    optimizer = counts["trained"] * TRAINED_EXTRA_BYTES
    return {"setting": setting, **counts, "weights_gib": weights / 2**30, "optimizer_gib": optimizer / 2**30,
            "total_gib": (weights + optimizer) / 2**30}


def model_variant(model_name: str, start_layer: int | None):
    """The baseline, or ProxyV from `start_layer`, of a preset or config; a bad name or layer is a UsageError."""
    try:
        spec = load_model_spec(model_name)
        return build_variants(spec, [start_layer] if start_layer is not None else [])[-1]
    except ValueError as error:  # an unknown preset, a start layer the model does not have
        raise UsageError(str(error)) from error


def measure(model_name: str, start_layer: int | None, lora_r: int, lora_alpha: int) -> list[dict]:
    variant = model_variant(model_name, start_layer)
    parts = parse_tunable_parts(DEFAULT_TUNABLE_PARTS)
    full = build_model(variant, "meta", torch.bfloat16, "sdpa")
    apply_tunable_parts(full, parts)
    rows = [budget_row("full fine-tuning", count_parameters(full))]
    lora_model = build_model(variant, "meta", torch.bfloat16, "sdpa")
    options = SimpleNamespace(lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.05, lora_bias="none", bits=16,
                              gradient_checkpointing=False)
    rows.append(budget_row(f"LoRA r={lora_r}", count_parameters(enable_lora(lora_model, options, parts))))
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(title)
    print(f"{'setting':<18} {'parameters':>15} {'trained':>15} {'of which LoRA':>15} {'weights GiB':>12} "
          f"{'grads+optim GiB':>16} {'sum GiB':>9}")
    for row in rows:
        print(f"{row['setting']:<18} {row['total']:>15,} {row['trained']:>15,} {row['lora']:>15,} "
              f"{row['weights_gib']:>12.1f} {row['optimizer_gib']:>16.1f} {row['total_gib']:>9.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Trained parameters and optimizer memory: LoRA vs full stage 2.")
    parser.add_argument("--model", default="vicuna-7b", help="a benchmark preset, or a config / checkpoint folder")
    parser.add_argument("--proxyv-start-layer", type=int, default=None, help="ProxyV from this layer (default: baseline)")
    parser.add_argument("--lora-r", type=int, default=128)
    parser.add_argument("--lora-alpha", type=int, default=256)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    rows = measure(args.model, args.proxyv_start_layer, args.lora_r, args.lora_alpha)
    kind = f"ProxyV s={args.proxyv_start_layer}" if args.proxyv_start_layer is not None else "baseline"
    print_table(f"{args.model}, {kind}: stage 2 (projector, ProxyV modules, language model)", rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"model": args.model, "proxyv_start_layer": args.proxyv_start_layer, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
