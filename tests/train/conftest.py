"""Fixtures shared by the training tests."""

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def deepspeed_cpu_ops():
    """DeepSpeed JIT-compiles its CPU communication op the first time a process needs it (about a
    minute, once per virtualenv). Built here in one process, before any two-rank run, so the ranks
    of a test never race each other (or a time limit) through that build."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    build = "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
    result = subprocess.run([sys.executable, "-c", build], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
