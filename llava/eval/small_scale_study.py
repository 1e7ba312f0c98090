"""`python -m llava.eval.small_scale_study`: the paper's accuracy claims at small scale, in one command.

    python -m llava.eval.small_scale_study --quick            # about 17 minutes on 2 CPU cores
    python -m llava.eval.small_scale_study --out study-full   # the larger preset

1. Builds the tiny assets (`python -m llava.tiny`) and the study's own pictures and questions
   (`llava.tiny.study_data`): a *coarse* group (background colour and shape of one large shape) and a
   *dense* group (how many of up to eight small dots, each in its own vision token's patch).
2. Trains the baseline and ProxyV from the same start (the tiny text-pretrained LLM and tiny CLIP, same
   seed) on the same data with the launch scripts' own recipe (`scripts/pretrain_*.sh`,
   `scripts/finetune_*.sh`; stage 2 for the preset's number of epochs).
3. Answers the held-out questions with each method of `llava.eval.study_methods`: the two trained
   models and, training-free on the baseline, VisionZip, PyramidDrop and the vision-to-vision masking
   curve. Answers go to `<out>/answers/<method>.jsonl`; a re-run reuses them and skips finished runs.
4. Writes `<out>/study.json`, `<out>/study.md` (the README table: accuracy per group with 95% Wilson
   intervals, prefill FLOPs of one held-out question) and `<out>/study.png` (accuracy against prefill
   FLOPs, accuracy against the masked fraction).

It is a benchmark, not a test: the tests cover its pieces on tiny settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

from llava.errors import UsageError, UserError, require_output_folder, run_main
from llava.serve.inference import check_device
from llava.tiny.build import DEFAULT_TINY_DIR
from llava.tiny.models import TINY_LLM_CONFIG
from llava.tiny.study_data import GROUPS, QUESTIONS_FILENAME, STUDY_DATA_VERSION, generate_study_data

from .study_methods import MASK_FRACTIONS
from .study_report import write_report
from .study_runner import evaluate_methods

logger = logging.getLogger(__name__)

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "scripts"
PRESETS = {
    "quick": {"scenes_per_group": 1000, "questions_per_category": 300, "stage2_epochs": 4},
    "full": {"scenes_per_group": 1500, "questions_per_category": 400, "stage2_epochs": 6},
}
SETTINGS_FILENAME = "study_settings.json"
# The study's stage 2 (its all-questions conversations, shuffled, batch 8, cosine from 2e-3), written out
# because the tiny default's stage 2 is now the bundled curriculum read in order at a constant rate.
STUDY_STAGE2_RECIPE = ("--per_device_train_batch_size", "8", "--learning_rate", "2e-3", "--lr_scheduler_type", "cosine",
                       "--lr_scheduler_kwargs", "{}", "--train_sampling_strategy", "random",
                       "--group_by_modality_length", "True")
# The launch scripts' variables that change the model, data or recipe: the study clears them so both
# runs train the tiny default recipe (device and launcher variables such as NUM_GPUS are kept).
RECIPE_VARIABLES = ("LLM_VERSION", "VISION_MODEL_VERSION", "TINY_FAMILY", "DATA_PATH", "IMAGE_FOLDER", "PROMPT_VERSION",
                    "RUN_NAME", "PRETRAIN_ADAPTER", "BATCH", "ACCUM", "GRID_PINPOINTS", "PROXYV_REDUCE_FACTOR",
                    "PROXYV_VARIANT", "VISION_TOKEN_REDUCTION", "VISIONZIP_DOMINANT", "VISIONZIP_CONTEXTUAL",
                    "PYRAMID_DROP_LAYERS", "PYRAMID_DROP_RATIO", "LEARN_PROXY", "LORA", "LORA_R", "LORA_ALPHA",
                    "LORA_LR", "MM_PROJECTOR_LR", "MM_VISION_MLP_LR")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the tiny baseline and ProxyV on the study's data, then "
                                                 "compare them with VisionZip, PyramidDrop and vision masking.")
    parser.add_argument("--out", default="study", help="folder for the data, runs, answers and report")
    parser.add_argument("--quick", action="store_true",
                        help="the quick preset (about 17 min on 2 CPU cores, 13 with the tiny assets built)")
    parser.add_argument("--tiny-dir", default=str(SCRIPTS_DIR.parent / DEFAULT_TINY_DIR),
                        help="where the tiny assets are (built if absent; default: the repository's, as the scripts use)")
    parser.add_argument("--scenes-per-group", type=int, default=None, help="training pictures per group (preset's)")
    parser.add_argument("--questions-per-category", type=int, default=None, help="held-out questions per category")
    parser.add_argument("--stage2-epochs", type=int, default=None, help="instruction-tuning epochs (preset's)")
    parser.add_argument("--proxyv-start-layer", type=int, default=2, help="ProxyV's s (the tiny LLM has 4 layers)")
    parser.add_argument("--mask-fractions", default=",".join(f"{f:g}" for f in MASK_FRACTIONS),
                        help="masked fractions q of the masking curve, comma separated, each in (0, 1]")
    parser.add_argument("--batch-size", type=int, default=16, help="questions answered per batch")
    parser.add_argument("--device", default="auto",
                        help="where the answers are computed: auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_args(argv)


def resolve_settings(args) -> dict:
    """The run's settings: the preset's, with the options given; a UsageError names a bad one."""
    settings = dict(PRESETS["quick" if args.quick else "full"])
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    for key, value in settings.items():
        if value < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1, got {value}.")
    try:
        fractions = [float(item) for item in args.mask_fractions.split(",") if item.strip()]
    except ValueError as error:
        raise UsageError(f"--mask-fractions must be numbers separated by commas, got {args.mask_fractions!r}.") from error
    if not fractions or not all(0 < fraction <= 1 for fraction in fractions):
        raise UsageError(f"--mask-fractions must be values in (0, 1], got {args.mask_fractions!r}.")
    layers = TINY_LLM_CONFIG["num_hidden_layers"]
    if not 0 <= args.proxyv_start_layer < layers:
        raise UsageError(f"--proxyv-start-layer must be in [0, {layers - 1}] (the tiny LLM has {layers} layers), got "
                         f"{args.proxyv_start_layer}.")
    if importlib.util.find_spec("matplotlib") is None:  # checked now, not after the training
        raise UsageError("the study's plot needs matplotlib: pip install -e \".[train]\"")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}.")
    args.device = check_device(args.device)  # not a setting: a study may continue on another device
    return {**settings, "mask_fractions": fractions, "proxyv_start_layer": args.proxyv_start_layer,
            "seed": args.seed, "tiny_dir": os.path.abspath(args.tiny_dir), "data_version": STUDY_DATA_VERSION}


def check_settings(out: Path, settings: dict) -> None:
    """Record the settings in `out`, or refuse to mix runs of other settings into it."""
    path = out / SETTINGS_FILENAME
    if path.exists():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if recorded != settings:
            changed = sorted(key for key in {*recorded, *settings} if recorded.get(key) != settings.get(key))
            raise UsageError(f"--out {out} holds a study run with other settings ({', '.join(changed)} differ); "
                             "give a new --out folder, or delete that one to start again.")
        logger.info("Continuing the study in %s (finished steps are reused)", out)
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1), encoding="utf-8")


def prepare_data(out: Path, settings: dict) -> Path:
    """The study's pictures and questions in `out/data` (written once)."""
    data = out / "data"
    if not (data / QUESTIONS_FILENAME).exists():
        generate_study_data(data, settings["scenes_per_group"], settings["questions_per_category"], settings["seed"])
    return data


def train(kind: str, out: Path, data: Path, settings: dict) -> Path:
    """Stage 1 and stage 2 of `kind` ("baseline" or "proxyv") with the launch scripts; the stage-2 folder."""
    runs = out / "runs"
    finetuned = runs / f"tiny-vicuna-{_run_kind(kind, settings)}-finetune"
    if (finetuned / "config.json").exists():
        logger.info("The %s run in %s is finished; reusing it", kind, finetuned)
        return finetuned
    if not SCRIPTS_DIR.is_dir():
        raise UsageError(f"the study trains with the launch scripts in {SCRIPTS_DIR}, which is missing: run it "
                         "from a clone of the repository (pip install -e .).")
    env = {**os.environ, "TINY_DIR": settings["tiny_dir"], "OUTPUT_ROOT": str(runs.resolve()),
           "PROXYV_START_LAYER": str(settings["proxyv_start_layer"]) if kind == "proxyv" else "none"}
    # The scripts call `python` and `torchrun`: this interpreter's, even from a virtualenv not activated.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    for name in RECIPE_VARIABLES:  # the tiny default recipe, whatever the shell has set
        env.pop(name, None)
    env["REPORT_TO"] = "none"
    stages = [("pretrain", "study_captions.json", []),
              ("finetune", "study_instruct.json", ["--num_train_epochs", str(settings["stage2_epochs"]), *STUDY_STAGE2_RECIPE])]
    for stage, data_file, extra in stages:
        logger.info("Training the %s model, %s stage", kind, stage)
        command = ["bash", str(SCRIPTS_DIR / f"{stage}_{kind}.sh"), "--data_path", str((data / data_file).resolve()),
                   "--image_folder", str(data.resolve()), "--seed", str(settings["seed"]), *extra]
        status = subprocess.run(command, env=env, check=False).returncode
        if status != 0:
            raise UserError(f"the {kind} model's {stage} stage failed (exit status {status}; its log is above): "
                            f"{' '.join(command)}")
    return finetuned


def _run_kind(kind: str, settings: dict) -> str:
    return "baseline" if kind == "baseline" else f"proxyv-s{settings['proxyv_start_layer']}"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = resolve_settings(args)
    out = require_output_folder(args.out, "--out", "a folder for the study (new, or one of its runs to continue)")
    check_settings(out, settings)
    data = prepare_data(out, settings)
    checkpoints = {kind: train(kind, out, data, settings) for kind in ("baseline", "proxyv")}
    results = evaluate_methods(checkpoints, data, out / "answers", settings["mask_fractions"],
                               Namespace(batch_size=args.batch_size, device=args.device))
    paths = write_report(results, out, settings, groups=GROUPS)
    print(paths["markdown"].read_text(encoding="utf-8"))
    logger.info("Wrote %s", ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
