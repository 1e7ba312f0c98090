"""A training run killed with SIGKILL resumes from its last *complete* checkpoint and ends with
exactly the weights of an uninterrupted run with the same seed.

Three short stage-1 runs of the tiny model (`train.py` subprocesses): uninterrupted; killed as soon
as its first checkpoint is complete (it is then training on, or writing the next checkpoint);
re-run after a fabricated, cut-off `checkpoint-N` with a higher step was dropped beside it. The comparison is exact: on CPU with
`dataloader_num_workers 0`, the resumed run restores the model, optimizer, scheduler, RNG states
and the data order (the Trainer skips the batches already seen), so every step repeats bit for bit.
"""

import os
import signal
import subprocess
import sys
import time

import torch

from llava.train.checkpoints import COMPLETE_MARKER, is_complete, last_complete_checkpoint
from tests.train.test_two_stage import TRAIN, _run, _stage1

STEPS = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--per_device_train_batch_size", "2"]


def _kill_at_first_checkpoint(args, output_dir) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, TRAIN, *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (output_dir / "checkpoint-2" / COMPLETE_MARKER).exists():
            assert process.poll() is None, f"the run ended (status {process.returncode}) before saving a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        assert process.poll() is None, "the run finished before it could be killed; give it more steps"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (output_dir / "mm_projector.bin").exists()  # it really did not finish


def test_sigkill_then_rerun_reaches_the_uninterrupted_weights(tiny_assets, tmp_path):
    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(_stage1(tiny_assets, reference_dir, *STEPS))
    # save_strategy "no" in _stage1 is overridden by the later --save_strategy in STEPS.
    assert is_complete(str(reference_dir / "checkpoint-8"))

    args = _stage1(tiny_assets, killed_dir, *STEPS)
    _kill_at_first_checkpoint(args, killed_dir)
    survivor = last_complete_checkpoint(str(killed_dir))
    assert survivor is not None and int(survivor.rsplit("-", 1)[1]) < 8
    # A checkpoint cut off mid-write, newer than anything real: it must never be picked.
    cut_off = killed_dir / "checkpoint-7"
    cut_off.mkdir(exist_ok=True)
    (cut_off / "trainer_state.json").write_text('{"global_step": 7, "log_hist')
    (cut_off / "mm_projector.bin").write_bytes(b"PK\x03\x04 cut off")

    log = _run(args)
    assert "Skipping incomplete checkpoint" in log and "checkpoint-7" in log
    assert f"Resuming from {survivor}" in log
    assert not (cut_off / COMPLETE_MARKER).exists()
    reference = torch.load(reference_dir / "mm_projector.bin", weights_only=True)
    resumed = torch.load(killed_dir / "mm_projector.bin", weights_only=True)
    assert reference.keys() == resumed.keys()
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name
    initial = torch.load(reference_dir / "checkpoint-2" / "mm_projector.bin", weights_only=True)
    assert any(not torch.equal(initial[name], value) for name, value in reference.items())  # training moved them
