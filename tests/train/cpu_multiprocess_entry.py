"""Test-only entry point: `llava/train/train.py` with DeepSpeed in several CPU processes (torchrun).

Why this shim exists: with `--deepspeed`, transformers' `TrainingArguments` builds accelerate's
`PartialState` without a communication backend, and accelerate only chooses gloo for a
multi-process run when it is told it is on CPU (`cpu=True`), which in turn turns its DeepSpeed
branch off. On a machine without GPUs the state therefore reports one process although DeepSpeed
has initialised torch.distributed with every rank: the Trainer would not shard the data and every
rank would save. Building the state here with the gloo backend, before the arguments are parsed,
and telling `TrainingArguments` to use it (`accelerator_config.use_configured_state`) gives the
real multi-process CPU setup. GPU runs do not need it (accelerate picks nccl there), and nothing in
the package is changed; on a GPU cluster launch `llava/train/train.py` directly as the scripts do.
"""

import os
import sys

from accelerate import PartialState

from llava.train.train import train

if __name__ == "__main__":
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # as TrainingArguments sets it while building its state
    PartialState(backend="gloo")
    del os.environ["ACCELERATE_USE_DEEPSPEED"]
    train([*sys.argv[1:], "--accelerator_config", '{"use_configured_state": true}'])
