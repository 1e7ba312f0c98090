"""End-to-end training throughput on the package's tiny assets, data loading included.

`tiny_training_throughput` builds the tiny assets (`llava.tiny.build.build_tiny_assets`, random
LLM: no text pretraining) and runs the real trainer (`llava.train.train.train`, in this process) with
the tiny model settings of `scripts/finetune_proxyv.sh`: stage 2 on the bundled all-questions
conversations (longer samples than the tiny default's single-question curriculum), AnyRes up to 3
crops, batch 4, the LLM, projector and ProxyV modules trained; on CUDA in bf16 with tf32 and
gradient checkpointing, as the launch scripts do on a GPU. It measures the baseline and ProxyV from
layer 2 (of the tiny LLM's 4, the tiny launch default).

Each variant trains twice from the same seed, for `short` and for `long` steps; the steady
samples/s is `(long - short) * batch / (runtime_long - runtime_short)`, where a runtime is the
trainer's own `train_runtime` (its whole training loop: data loading, collation, forward, backward,
optimizer), so start-up costs (CUDA context, first-step kernels, the first batches) cancel out. The
trainer's `train_samples_per_second` of the long run, start-up included, is reported beside it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from llava.tiny.build import TINY_PROXYV_START_LAYER, TinyAssets, build_tiny_assets
from llava.tiny.models import TINY_PROXYV_REDUCE_FACTOR
from llava.train.train import train

logger = logging.getLogger(__name__)

TINY_GRID_PINPOINTS = "[[336,336],[336,672],[672,336]]"  # base + 1x2 / 2x1 tiles, as the tiny launch uses
TINY_VARIANTS = (("baseline", None), ("proxyv", TINY_PROXYV_START_LAYER))


def train_arguments(assets: TinyAssets, output_dir: Path, steps: int, batch: int, start_layer: int | None,
                    device: str) -> list[str]:
    """`llava/train/train.py` options of one tiny stage-2 run (the launch scripts' tiny settings)."""
    arguments = [
        "--model_name_or_path", str(assets.llm), "--vision_tower", str(assets.clip), "--version", "v1",
        "--data_path", str(assets.instruct), "--image_folder", str(assets.data), "--output_dir", str(output_dir),
        "--mm_vision_select_layer", "-2", "--mm_projector_type", "mlp2x_gelu",
        "--mm_tunable_parts", "mm_mlp_adapter,mm_vision_mlp,mm_language_model",
        "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", TINY_GRID_PINPOINTS,
        "--mm_patch_merge_type", "flat_newline", "--group_by_modality_length", "True",
        "--max_steps", str(steps), "--per_device_train_batch_size", str(batch), "--learning_rate", "2e-3",
        "--model_max_length", "8192", "--dataloader_num_workers", "0", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1000", "--seed", "0",
    ]
    if start_layer is not None:
        arguments += ["--proxyv_start_layer", str(start_layer), "--proxyv_reduce_factor", str(TINY_PROXYV_REDUCE_FACTOR)]
    if device == "cuda":
        arguments += ["--bf16", "True", "--tf32", "True", "--gradient_checkpointing", "True"]
    else:
        arguments += ["--use_cpu", "True"]
    return arguments


def trainer_metrics(output_dir: Path) -> dict:
    """The trainer's final metrics (`train_runtime`, `train_samples_per_second`, ...) of a finished run."""
    state = json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))
    final = [entry for entry in state["log_history"] if "train_runtime" in entry]
    if not final:
        raise ValueError(f"{output_dir / 'trainer_state.json'} has no train_runtime: the run did not finish.")
    return final[-1]


def _one_run(assets: TinyAssets, workdir: Path, name: str, steps: int, batch: int, start_layer: int | None,
             device: str) -> dict:
    output_dir = workdir / f"{name}-{steps}"
    train(train_arguments(assets, output_dir, steps, batch, start_layer, device))
    return trainer_metrics(output_dir)


def variant_throughput(assets: TinyAssets, workdir: Path, name: str, start_layer: int | None, steps: tuple[int, int],
                       batch: int, device: str) -> dict:
    """Steady and whole-run samples/s of one tiny variant (see the module docstring)."""
    short, long = steps
    short_metrics = _one_run(assets, workdir, name, short, batch, start_layer, device)
    long_metrics = _one_run(assets, workdir, name, long, batch, start_layer, device)
    extra_time = long_metrics["train_runtime"] - short_metrics["train_runtime"]
    steady = (long - short) * batch / extra_time if extra_time > 0 else None
    return {"variant": name, "proxyv_start_layer": start_layer, "batch_size": batch, "steps": [short, long],
            "train_runtime_s": [short_metrics["train_runtime"], long_metrics["train_runtime"]],
            "samples_per_second": steady,
            "trainer_samples_per_second": long_metrics["train_samples_per_second"]}


def tiny_training_throughput(device: str, steps: tuple[int, int] = (5, 45), batch: int = 4,
                             assets: TinyAssets | None = None) -> dict:
    """Samples/s of the tiny baseline and ProxyV trained end to end; returns `{"setting", "rows"}`.

    `assets`: tiny assets built before (only read); by default they are built in a temporary folder.
    """
    short, long = steps
    if not 0 < short < long:
        raise ValueError(f"tiny training steps must be 0 < short < long, got {steps}.")
    with tempfile.TemporaryDirectory(prefix="tiny_throughput_") as folder:
        root = Path(folder)
        assets = assets or build_tiny_assets(root / "assets", llm_text_steps=0, clip_pretrain_steps=0, num_scenes=200)
        rows = [variant_throughput(assets, root, name, start, steps, batch, device) for name, start in TINY_VARIANTS]
    baseline = rows[0]["samples_per_second"]
    for row in rows:
        ratio = None if not baseline or row["samples_per_second"] is None else row["samples_per_second"] / baseline
        row["speedup"] = ratio
    setting = {"data": "tiny_instruct.json (bundled tiny assets), AnyRes up to 3 crops, 0 loader workers",
               "precision": "bf16 + tf32, gradient checkpointing" if device == "cuda" else "float32",
               "device": device, "torch": torch.__version__,
               "samples_per_second": "(long - short) * batch / (train_runtime_long - train_runtime_short)"}
    return {"setting": setting, "rows": rows}
