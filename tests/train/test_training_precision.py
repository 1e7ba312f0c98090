"""Precision flags on a machine without CUDA: fp16 and tf32 refused with the fix, bf16 needs --use_cpu."""

import pytest
import torch

from llava.train.arguments import TrainingArguments

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages on machines without CUDA")


@pytest.mark.parametrize(("flags", "needle"), [
    ({"fp16": True}, "--fp16 needs a CUDA GPU"),
    ({"tf32": True}, "--tf32 is a CUDA"),
    ({"bf16": True}, "--bf16 on a machine without CUDA needs --use_cpu True"),
])
def test_gpu_only_precision_is_refused_with_the_fix(tmp_path, flags, needle):
    with pytest.raises(ValueError, match=needle.replace("-", r"\-")):
        TrainingArguments(output_dir=str(tmp_path), **flags)


def test_bf16_on_cpu_is_accepted_with_use_cpu(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True)
    assert args.bf16 and args.device.type == "cpu"
