"""The timed steps of `python -m llava.eval.gpu_benchmark`: one model, one attention backend, on a device.

A `ModelMeasurement` builds one variant with random weights directly on the device (through
`llava.eval.prefill_benchmark.VariantRunner`, the CPU benchmark's runner: the same prefill,
decoding step and training step) and times, each as the median of its repeats after its warm-ups:
* the prefill (`use_cache=True`, logits of the last token only);
* one decoding step over the prefill's KV cache;
* one training step (forward + backward, no optimizer) with gradient checkpointing on, and one with
  it off, which may run out of device memory: that phase then reads `"out of memory"` and the
  caller may measure it again on a shallower model (`measure_training_only`).

Each phase's record is `{"time_s", "min_s", "max_s", "samples_s", "peak_memory_mb"}` (peak memory
above what was allocated before the run: activations, KV cache, gradients; weights excluded), or
`{"skipped": reason}`. Nothing here needs CUDA: the tests run it on CPU at the tiny presets.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
import types
import warnings

import torch

from llava.eval.prefill_benchmark import PhaseMemory, Variant, VariantRunner
from llava.model.masks import FLEX_ATTENTION

OUT_OF_MEMORY = "out of memory"


@dataclasses.dataclass(frozen=True)
class Repeats:
    """Warm-up and timed runs of each phase (warm-ups also absorb flex_attention's compilation)."""

    prefill: tuple[int, int] = (2, 5)
    decode: tuple[int, int] = (3, 10)
    train: tuple[int, int] = (1, 3)

    @classmethod
    def quick(cls) -> Repeats:
        """One timed run of each phase, no warm-up (tests, smoke runs)."""
        return cls(prefill=(0, 1), decode=(0, 1), train=(0, 1))


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    """Drop what the last model left behind (its graph, cache and gradients) before the next build."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's out-of-memory error (a `RuntimeError` subclass); on CPU an allocation failure."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def timed_phase(step, device: str, warmup: int, repeats: int) -> dict:
    """Median, min, max and every run's wall time of `step()` after `warmup` untimed runs, and the
    largest peak memory of the timed runs."""
    for _ in range(warmup):
        step()
    samples, peaks = [], []
    for _ in range(repeats):
        with PhaseMemory(device) as memory:
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            samples.append(time.perf_counter() - start)
        peaks.append(memory.peak_mb)
    return {"time_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "samples_s": samples, "peak_memory_mb": max(peaks)}


def set_checkpointing(model, enabled: bool) -> None:
    """Gradient checkpointing of the decoder layers on or off (non-reentrant, as training runs it).

    transformers >= 5.23 calls `gradient_checkpointing_enable` a deprecated alias of
    `activation_checkpointing_enable`, which 5.20 - 5.22 lack; the alias works on every version we support.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if enabled:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()


def training_unavailable(backend: str, device: str) -> str | None:
    """Why a training step cannot run with `backend` on `device`, or None."""
    if backend == FLEX_ATTENTION and device != "cuda":
        return "torch's FlexAttention has no backward pass on CPU"
    return None


class ModelMeasurement:
    """One variant built on `device` in `dtype` with `backend`; each method measures one phase."""

    def __init__(self, variant: Variant, device: str, dtype: torch.dtype, backend: str, text_tokens: int,
                 crops: int, repeats: Repeats):
        self.device, self.backend, self.repeats = device, backend, repeats
        options = types.SimpleNamespace(device=device, attn_implementation=backend, text_tokens=text_tokens,
                                        crops=crops)
        start = time.perf_counter()
        self.runner = VariantRunner(variant, options, dtype)
        synchronize(device)
        self.build_s = time.perf_counter() - start

    def prefill_and_decode(self) -> dict:
        """The prefill, then the decoding step over its cache."""
        prefill = timed_phase(self.runner.prefill, self.device, *self.repeats.prefill)
        if self.runner.last_prefill is None:  # no warm-up or timed run left a cache
            self.runner.prefill()
        decode = timed_phase(self.runner.decode, self.device, *self.repeats.decode)
        self.runner.last_prefill = self.runner.decode_inputs = None  # free the KV cache before training
        return {"prefill": prefill, "decode": decode}

    def train(self, checkpointing: bool) -> dict:
        """One training step with gradient checkpointing on or off; out of memory is a result, not an error."""
        reason = training_unavailable(self.backend, self.device)
        if reason:
            return {"skipped": reason}
        set_checkpointing(self.runner.model, checkpointing)
        try:
            return timed_phase(self.runner.train, self.device, *self.repeats.train)
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
            if not is_out_of_memory(error):
                raise
        self.runner.model.zero_grad(set_to_none=True)
        self.runner.model.eval()
        free_memory(self.device)
        return {"skipped": OUT_OF_MEMORY}

    def close(self) -> None:
        self.runner.close()
        self.runner = None
        free_memory(self.device)


def measure_model(variant: Variant, device: str, dtype: torch.dtype, backend: str, text_tokens: int, crops: int,
                  repeats: Repeats, train_without_checkpointing: bool = True) -> dict:
    """Every phase of one variant with one backend: prefill, decode, training with and (optionally)
    without gradient checkpointing; the model is freed before returning."""
    measurement = ModelMeasurement(variant, device, dtype, backend, text_tokens, crops, repeats)
    try:
        phases = measurement.prefill_and_decode()
        phases["train_checkpointed"] = measurement.train(checkpointing=True)
        if train_without_checkpointing:
            phases["train_no_checkpointing"] = measurement.train(checkpointing=False)
        weights_mb = measurement.runner.weights_mb
        return {"build_s": measurement.build_s, "weights_mb": weights_mb, **phases}
    finally:
        measurement.close()


def measure_training_only(variant: Variant, device: str, dtype: torch.dtype, backend: str, text_tokens: int,
                          crops: int, repeats: Repeats) -> dict:
    """The training step without gradient checkpointing alone (e.g. of a shallower model)."""
    measurement = ModelMeasurement(variant, device, dtype, backend, text_tokens, crops, repeats)
    try:
        return measurement.train(checkpointing=False)
    finally:
        measurement.close()
