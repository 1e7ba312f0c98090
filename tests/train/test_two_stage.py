"""End to end on the tiny model: stage 1 -> stage 2 -> load -> generate, ProxyV and baseline;
the projector hand-off under DeepSpeed ZeRO-3 with two CPU processes; resuming from the last checkpoint.

Each run is a real `llava/train/train.py` process (through torchrun + DeepSpeed where it says so),
kept to a few optimisation steps so the whole file stays around a minute or two on 2 cores.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava.eval.run_llava import answer
from llava.mm_utils import load_image
from llava.model.builder import load_pretrained_model

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "llava" / "train" / "train.py")
MULTIPROCESS_ENTRY = Path(__file__).with_name("cpu_multiprocess_entry.py")


@pytest.fixture(scope="session")
def assets(tiny_assets):
    return tiny_assets


def _common(assets, output_dir, *extra):
    return [
        "--model_name_or_path",
        str(assets.llm),
        "--vision_tower",
        str(assets.clip),
        "--image_folder",
        str(assets.data),
        "--output_dir",
        str(output_dir),
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
        "--logging_steps",
        "1",
        "--learning_rate",
        "1e-3",
        *extra,
    ]


def _stage1(assets, output_dir, *extra):
    return _common(
        assets,
        output_dir,
        "--version",
        "plain",
        "--data_path",
        str(assets.captions),
        "--image_aspect_ratio",
        "pad",
        "--mm_tunable_parts",
        "mm_mlp_adapter,mm_vision_mlp",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "3",
        "--save_strategy",
        "no",
        *extra,
    )


def _stage2(assets, output_dir, adapter, *extra):
    return _common(
        assets,
        output_dir,
        "--version",
        "v1",
        "--data_path",
        str(assets.instruct),
        "--pretrain_mm_mlp_adapter",
        str(adapter),
        "--model_max_length",
        "8192",
        "--mm_tunable_parts",
        "mm_mlp_adapter,mm_vision_mlp,mm_language_model",
        "--per_device_train_batch_size",
        "1",
        "--group_by_modality_length",
        "True",
        *extra,
    )


def _free_port() -> int:
    """A port nobody listens on now: each two-rank run gets its own rendezvous, so a run never meets
    the store of an earlier run (or of another test session on the same machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_logs(log_dir: Path) -> dict[str, str]:
    """Each rank's stdout + stderr, keyed by local rank ("0", "1"): torchrun writes them to separate files."""
    logs = {}
    for rank_dir in sorted(path for path in log_dir.glob("*/attempt_*/*") if path.is_dir()):
        logs[rank_dir.name] = "".join(
            (rank_dir / name).read_text(errors="replace") for name in ("stdout.log", "stderr.log")
            if (rank_dir / name).exists())
    return logs


def _run(args, deepspeed: bool = False) -> str:
    """One training run: in this process's Python, or with DeepSpeed ZeRO-3 in two CPU processes.

    Returns the run's output; for two ranks, rank 0's (each rank writes its own log files, so lines
    of the two ranks never interleave). A failed run shows every rank's log tail.
    """
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not deepspeed:
        result = subprocess.run([sys.executable, TRAIN, *args], env=env, capture_output=True, text=True, timeout=600,
                                cwd=REPO)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        return result.stdout + result.stderr
    log_dir = Path(tempfile.mkdtemp(prefix="rank_logs_"))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "--log_dir", str(log_dir), "--redirects", "3",
        str(MULTIPROCESS_ENTRY),  # train.py behind a test-only shim; its docstring says why
        "--deepspeed", str(REPO / "zero3.json"), *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    logs = _rank_logs(log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)
    report = "".join(f"\n===== rank {rank} =====\n{log[-4000:]}" for rank, log in logs.items())
    assert result.returncode == 0, f"torchrun exited {result.returncode}\n{result.stderr[-3000:]}{report}"
    assert set(logs) == {"0", "1"}, f"expected the logs of ranks 0 and 1, found {sorted(logs)}\n{report}"
    return logs["0"]


def _answers(model_dir, assets) -> str:
    tokenizer, model, processor, _ = load_pretrained_model(str(model_dir), None, None, device="cpu")
    image = load_image(assets.example_image())
    reply = answer(
        tokenizer, model, processor, [image], "What color is the background?", "vicuna_v1", max_new_tokens=4
    )
    assert isinstance(reply, str)
    return type(model).__name__


def test_zero3_two_stages_proxyv_hand_off_and_answer(assets, deepspeed_cpu_ops, tmp_path):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    log = _run(_stage1(assets, stage1, "--proxyv_start_layer", "2", "--proxyv_reduce_factor", "2"), deepspeed=True)
    # ZeRO-3 really partitioned the model over the two ranks: rank 0 (the one that logs) holds half.
    shares = re.findall(r"partitioned across 2 process\(es\); this rank holds (\d+) of their (\d+) values", log)
    assert len(shares) == 1, log[-3000:]
    held, total = map(int, shares[0])
    assert 0.45 < held / total <= 0.55, (held, total)
    # The data is sharded: 3 steps of 4 samples per rank on 2 ranks is 24 of the 200 captions.
    assert "'epoch': '0.12'" in log, log[-3000:]
    adapter = torch.load(stage1 / "mm_projector.bin", weights_only=True)
    assert any(k.startswith("model.vision_mlp_layers.") for k in adapter)
    assert any(k.startswith("model.mm_projector.") for k in adapter)

    # Learning rate 0: whatever stage 2 saves for the multimodal weights is exactly what it loaded.
    _run(
        _stage2(
            assets,
            stage2,
            stage1 / "mm_projector.bin",
            "--proxyv_start_layer",
            "2",
            "--proxyv_reduce_factor",
            "2",
            "--max_steps",
            "1",
            "--learning_rate",
            "0",
            "--save_strategy",
            "no",
        ),
        deepspeed=True,
    )
    saved = load_file(str(stage2 / "model.safetensors"))
    for name, value in adapter.items():
        assert torch.equal(saved[name].float(), value.float()), name
    config = json.loads((stage2 / "config.json").read_text())
    assert config["model_type"] == "llava_proxyv_llama" and config["proxyv_start_layer"] == 2
    assert _answers(stage2, assets) == "LlavaProxyVLlamaForCausalLM"


@pytest.fixture(scope="module")
def baseline_stage1(assets, tmp_path_factory):
    """One stage-1 run of the baseline, shared by the tests that continue from it."""
    stage1 = tmp_path_factory.mktemp("baseline_stage1")
    _run(_stage1(assets, stage1))
    return stage1


def test_baseline_two_stages_learn_and_answer(assets, baseline_stage1, tmp_path):
    stage1, stage2 = baseline_stage1, tmp_path / "stage2"
    # Stage 2 in bfloat16 on CPU (--bf16 needs --use_cpu without CUDA; fp16 and tf32 are refused).
    log = _run(
        _stage2(assets, stage2, stage1 / "mm_projector.bin", "--max_steps", "6", "--save_strategy", "no",
                "--bf16", "True", "--use_cpu", "True")
    )
    losses = [float(value) for value in re.findall(r"'loss': '([0-9.]+)'", log)]
    assert len(losses) == 6 and all(0 < loss < 20 for loss in losses), losses
    assert not (stage2 / "mm_projector.bin").exists()  # stage 2 saves the whole model
    assert _answers(stage2, assets) == "LlavaLlamaForCausalLM"


def test_rerun_resumes_from_the_last_checkpoint(assets, baseline_stage1, tmp_path):
    stage2 = tmp_path / "stage2"
    args = _stage2(
        assets,
        stage2,
        baseline_stage1 / "mm_projector.bin",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    )
    _run([*args, "--max_steps", "2"])
    assert (stage2 / "checkpoint-2").is_dir()
    log = _run([*args, "--max_steps", "4"])
    assert "Resuming from" in log and "checkpoint-2" in log
    state = json.loads((stage2 / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_proxyv_two_stages_on_a_qwen2_llm(assets, tmp_path):
    """The whole path on a non-Llama family: a tiny Qwen2 LLM (q/k/v biases) -> stage 1 -> stage 2
    -> a `llava_proxyv_qwen` checkpoint that the builder loads and that answers."""
    from transformers import AutoTokenizer

    from llava.tiny.models import build_tiny_llm

    llm = build_tiny_llm(tmp_path / "tiny-qwen2", AutoTokenizer.from_pretrained(assets.llm), family="qwen2")
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    swap = ["--model_name_or_path", str(llm)]  # later flags win in HfArgumentParser
    _run([*_stage1(assets, stage1, "--proxyv_start_layer", "2", "--proxyv_reduce_factor", "2"), *swap])
    _run([*_stage2(assets, stage2, stage1 / "mm_projector.bin", "--proxyv_start_layer", "2", "--proxyv_reduce_factor", "2", "--max_steps", "2",
                   "--save_strategy", "no"), *swap])
    config = json.loads((stage2 / "config.json").read_text())
    assert config["model_type"] == "llava_proxyv_qwen" and config["proxyv_start_layer"] == 2
    assert _answers(stage2, assets) == "LlavaProxyVQwenForCausalLM"
    # Training continues from the llava_proxyv_qwen checkpoint itself (not from a plain LLM).
    more = tmp_path / "more"
    log = _run([*_common(assets, more, "--version", "v1", "--data_path", str(assets.instruct), "--max_steps", "1",
                         "--save_strategy", "no", "--per_device_train_batch_size", "1"),
                "--model_name_or_path", str(stage2)])
    assert "multimodal weights start from their initialisation" not in log
    assert json.loads((more / "config.json").read_text())["model_type"] == "llava_proxyv_qwen"
