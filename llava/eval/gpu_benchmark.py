"""`python -m llava.eval.gpu_benchmark` (`bash scripts/bench_gpu.sh`): ProxyV vs the baseline on one GPU.

At the paper's setting (full-depth Vicuna-7B with random weights in bf16, 50 text tokens + 5 crops,
batch 1) it times, for the baseline and ProxyV from each start layer (12 and 16), under every
attention backend (eager, sdpa, flex_attention, flash_attention_2; one that cannot run here is a
"skipped" row with the reason): the prefill, one decoding step, and one training step (forward +
backward, no optimizer) with gradient checkpointing on and off (`llava.eval.gpu_steps`). One model
is built per (variant, backend), directly on the GPU, and freed before the next.

A training step without checkpointing may not fit at full depth (a 7B model's activations, weights
and gradients on an 80 GB card): when the baseline's runs out of memory, that backend's rows are
measured again on a shallower model (`--fallback-layers`, default 8, with s scaled: 12, 16 of 32 ->
3, 4 of 8), and the table says at which depth (`--no-checkpointing-layers N` asks for it directly).

Each row also carries its prefill FLOPs (counted on meta, `llava.eval.prefill_benchmark.flops_row`)
and the FLOPs reduction beside the time reduction (`llava.eval.gpu_report`); the summary names the
fastest backend and whether its time reductions are within 2 points of the FLOPs reductions. Last,
the tiny assets are trained end to end (`llava.eval.train_throughput`: samples/s, data loading included).

Writes `--out`/gpu_benchmark.json and gpu_benchmark.md. Without CUDA it stops at once: one
`error: ...` line, exit status 2. `run(settings)` takes any device (the tests run it on CPU, tiny).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import torch
import transformers
from transformers.utils import is_flash_attn_2_available, is_torch_flex_attn_available

from llava.errors import UsageError, one_line, require_output_folder, run_main
from llava.eval.gpu_report import (
    add_reductions,
    format_markdown,
    measured_row,
    summarize,
    unmeasured_row,
    write_outputs,
)
from llava.eval.gpu_steps import FLEX_ATTENTION, OUT_OF_MEMORY, Repeats, measure_model, measure_training_only
from llava.eval.mask_build import measure_mask_build
from llava.eval.prefill_benchmark import LM_HEAD_NOTE, build_variants, flops_row, memory_metric
from llava.eval.presets import load_model_spec
from llava.eval.train_throughput import tiny_training_throughput
from llava.model.backends import ATTN_IMPLEMENTATIONS

logger = logging.getLogger(__name__)

FALLBACK_LAYERS = 8
NO_CUDA = ("the GPU benchmark needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {version}); run "
           "it on a machine with an NVIDIA GPU, or time on CPU with python -m llava.eval.prefill_benchmark --device cpu.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure. `layers` cuts every model (None: full depth); `no_checkpointing_layers` measures
    the training step without checkpointing at that depth only (None: full depth, `fallback_layers` on OOM)."""

    preset: str = "vicuna-7b"
    start_layers: tuple[int, ...] = (12, 16)
    backends: tuple[str, ...] = ATTN_IMPLEMENTATIONS
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    text_tokens: int = 50
    crops: int = 5
    layers: int | None = None
    no_checkpointing_layers: int | None = None
    fallback_layers: int = FALLBACK_LAYERS
    repeats: Repeats = Repeats()
    tiny_training_steps: tuple[int, int] | None = (5, 45)  # None: no tiny training
    tiny_training_batch: int = 4


def require_device(device: str) -> None:
    """A CUDA run on a machine without CUDA is a `UsageError` (one line, exit status 2)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(NO_CUDA.format(version=torch.__version__))


def backend_unavailable(backend: str, device: str) -> str | None:
    """Why `backend` cannot run on `device` here, or None."""
    if backend not in ATTN_IMPLEMENTATIONS:
        raise UsageError(f"Unknown attention backend '{backend}'. Known: {', '.join(ATTN_IMPLEMENTATIONS)}.")
    if backend == "flash_attention_2":
        if device != "cuda":
            return "flash-attention runs on CUDA only"
        if not is_flash_attn_2_available():
            return "flash-attn is not installed (pip install 'proxyv[flash]')"
    if backend == FLEX_ATTENTION and not is_torch_flex_attn_available():
        return f"torch {torch.__version__} has no flex_attention (needs torch >= 2.5)"
    return None


def scaled_start_layers(start_layers, depth: int, layers: int) -> list[int]:
    """The start layers carried from `depth` to `layers` layers: round(s * layers / depth)."""
    return [min(max(round(start * layers / depth), 0), layers) for start in start_layers]


def ran_out_of_memory(record: dict | None) -> bool:
    """Whether a phase's record says it ran out of device memory."""
    return (record or {}).get("skipped") == OUT_OF_MEMORY


def _measure_variant(settings: Settings, variant, backend: str, without_checkpointing: bool) -> dict:
    return measure_model(variant, settings.device, settings.dtype, backend, settings.text_tokens, settings.crops,
                         settings.repeats, train_without_checkpointing=without_checkpointing)


def measure_backend(settings: Settings, variants: list, flops_rows: list[dict], backend: str) -> list[dict]:
    """Every variant under one backend; a variant that fails is a "failed" row (traceback in the log)."""
    rows, full_depth_fits = [], settings.no_checkpointing_layers is None
    for variant, flops in zip(variants, flops_rows):
        logger.info("Measuring %s s=%s with %s", variant.name, variant.start_layer, backend)
        try:
            phases = _measure_variant(settings, variant, backend, full_depth_fits)
        except Exception as error:  # one backend's failure must not lose the other backends' numbers
            logger.exception("%s %s s=%s failed", backend, variant.name, variant.start_layer)
            rows.append(unmeasured_row(backend, "failed", one_line(error), flops))
            continue
        if variant.name == "baseline" and ran_out_of_memory(phases.get("train_no_checkpointing")):
            full_depth_fits = False  # measured again on a shallower model, for every variant
        rows.append(measured_row(backend, flops, phases))
    if not full_depth_fits:
        _measure_shallow_training(settings, rows, backend)
    return rows


def _measure_shallow_training(settings: Settings, rows: list[dict], backend: str) -> None:
    """The training step without checkpointing of every measured row, on a shallower model."""
    spec = load_model_spec(settings.preset)
    depth = settings.layers or spec.num_layers
    layers = min(settings.no_checkpointing_layers or settings.fallback_layers, depth)
    starts = scaled_start_layers(settings.start_layers, depth, layers)
    shallow = build_variants(spec, starts, layers)
    for row, variant in zip(rows, shallow):
        if row["status"] != "measured":
            continue
        logger.info("Training %s s=%s with %s without checkpointing at %d layers", variant.name,
                    variant.start_layer, backend, layers)
        record = measure_training_only(variant, settings.device, settings.dtype, backend, settings.text_tokens,
                                       settings.crops, settings.repeats)
        row["train_no_checkpointing"] = {**record, "num_layers": layers, "proxyv_start_layer": variant.start_layer}


def setting(settings: Settings, spec) -> dict:
    """The JSON 'setting': everything that defines the numbers."""
    device_name = torch.cuda.get_device_name() if settings.device == "cuda" else settings.device
    values = {key: value for key, value in dataclasses.asdict(settings).items() if key not in ("dtype", "repeats")}
    return {**values, "model": spec.name, "dtype": str(settings.dtype).removeprefix("torch."),
            "repeats": dataclasses.asdict(settings.repeats), "device_name": device_name,
            "sequence_length": settings.text_tokens + settings.crops * (spec.tokens_per_crop + 1),
            "num_layers": settings.layers or spec.num_layers, "lm_head": LM_HEAD_NOTE,
            "timing": "median wall time of the timed runs after the warm-ups (repeats: [warm-up, timed] per phase), "
                      "the device synchronized around each run",
            "memory": memory_metric(settings.device), "torch": torch.__version__,
            "transformers": transformers.__version__}


def run(settings: Settings) -> dict:
    """Measure everything `settings` asks for; returns the JSON-ready result."""
    require_device(settings.device)
    spec = load_model_spec(settings.preset)
    variants = build_variants(spec, list(settings.start_layers), settings.layers)
    logger.info("Counting the prefill FLOPs of %d variant(s) of %s on meta", len(variants), spec.name)
    flops_rows = [flops_row(variant, settings.dtype, settings.text_tokens, settings.crops) for variant in variants]
    rows = []
    for backend in settings.backends:
        reason = backend_unavailable(backend, settings.device)
        if reason:
            logger.info("Skipping %s: %s", backend, reason)
            rows.append(unmeasured_row(backend, "skipped", reason))
            continue
        rows += measure_backend(settings, variants, flops_rows, backend)
    add_reductions(rows, flops_rows)
    proxyv = next(variant for variant in variants if variant.name == "proxyv")
    logger.info("Building the ProxyV s=%s attention mask dense and as a flex block mask", proxyv.start_layer)
    mask_build = measure_mask_build(proxyv.config, settings.text_tokens, settings.crops, spec.tokens_per_crop,
                                    settings.device, settings.dtype)
    tiny = None
    if settings.tiny_training_steps is not None:
        logger.info("Training the tiny assets end to end")
        tiny = tiny_training_throughput(settings.device, settings.tiny_training_steps, settings.tiny_training_batch)
    return {"setting": setting(settings, spec), "flops": flops_rows, "rows": rows, "summary": summarize(rows),
            "mask_build": mask_build, "tiny_training": tiny}


# ----------------------------------------------------------------------------- command line


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from error


def _backends(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in ATTN_IMPLEMENTATIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(ATTN_IMPLEMENTATIONS)}, got '{text}'")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="vicuna-7b", help="model preset (llava.eval.presets); default %(default)s")
    parser.add_argument("--start-layers", type=_int_tuple, default=(12, 16), help="ProxyV start layers (12,16)")
    parser.add_argument("--backends", type=_backends, default=ATTN_IMPLEMENTATIONS,
                        help=f"comma-separated attention backends (default: {','.join(ATTN_IMPLEMENTATIONS)})")
    parser.add_argument("--text-tokens", type=int, default=50)
    parser.add_argument("--crops", type=int, default=5)
    parser.add_argument("--layers", type=int, default=None, help="cut every model to this many layers")
    parser.add_argument("--no-checkpointing-layers", type=int, default=None,
                        help="train without checkpointing at this depth only (default: full, 8 on out-of-memory)")
    parser.add_argument("--out", default="bench-gpu", help="folder for gpu_benchmark.json / .md (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="one timed run per phase, no warm-up (smoke test)")
    parser.add_argument("--tiny-steps", type=_int_tuple, default=(5, 45),
                        help="tiny end-to-end training: short,long steps (default 5,45)")
    parser.add_argument("--no-tiny-training", action="store_true", help="skip the tiny end-to-end training")
    return parser.parse_args(argv)


def settings_from_args(args) -> Settings:
    if args.crops < 1 or args.text_tokens < 0:
        raise UsageError("--crops must be >= 1 and --text-tokens >= 0.")
    if len(args.tiny_steps) != 2:
        raise UsageError(f"--tiny-steps takes two step counts, short,long; got {args.tiny_steps}.")
    return Settings(preset=args.preset, start_layers=args.start_layers, backends=args.backends,
                    text_tokens=args.text_tokens, crops=args.crops, layers=args.layers,
                    no_checkpointing_layers=args.no_checkpointing_layers,
                    repeats=Repeats.quick() if args.quick else Repeats(),
                    tiny_training_steps=None if args.no_tiny_training else args.tiny_steps)


def main(argv=None) -> int:
    """The GPU benchmark under the project's error policy (`llava.errors.run_main`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    settings = settings_from_args(args)
    require_device(settings.device)
    require_output_folder(args.out, "--out")
    try:
        build_variants(load_model_spec(settings.preset), list(settings.start_layers), settings.layers)
    except ValueError as error:  # the presets' and configs' own checks of the options
        raise UsageError(one_line(error)) from error
    result = run(settings)
    json_path, markdown_path = write_outputs(result, args.out)
    print(format_markdown(result))
    print(f"wrote {json_path} and {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
