"""What building the ProxyV attention mask costs, dense vs FlexAttention block mask.

A ProxyV forward builds its plan (indices, positions and the attention mask) once for all ProxyV
layers (`llava.model.proxyv.plan.build_proxyv_plan`). `measure_mask_build` builds it at a
benchmark setting with each rendering of the mask: the dense additive `[B, 1, Q, K]` mask eager
and sdpa take, and the block mask flex_attention takes (compiled `create_block_mask` on CUDA,
eager on CPU, where it briefly holds one bool grid). Per rendering: build time (median, min-max),
the mask's size through the forward, and peak memory while building. Used by
`llava.eval.layer_profile` (CPU) and `llava.eval.gpu_benchmark` (CUDA).
"""

import statistics
import time

import torch

from llava.model.proxyv.plan import build_proxyv_plan

from .prefill_benchmark import PhaseMemory, cpu_layout, make_input_ids

MASK_RENDERINGS = (("sdpa", "dense additive [B, 1, Q, K]"), ("flex_attention", "flex block mask"))


def mask_megabytes(mask) -> float:
    """Bytes the mask holds through the forward: the dense tensor, or the block mask's index tensors."""
    tensors = [mask] if isinstance(mask, torch.Tensor) else [t for t in mask.as_tuple() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def measure_mask_build(config, text_tokens: int, crops: int, tokens_per_crop: int, device: str, dtype: torch.dtype,
                       warmup: int = 1, repeats: int = 5) -> list[dict]:
    """One row per rendering for a ProxyV `config` and one prompt of `text_tokens` + `crops` crops."""
    input_ids = make_input_ids(config.vocab_size, text_tokens)  # [1, L]
    num_proxies = config.decoder_proxies_per_crop
    rows = []
    for backend, rendering in MASK_RENDERINGS:
        samples, peaks, mask = [], [], None
        for round_index in range(warmup + repeats):
            layout = cpu_layout(config, input_ids, crops, tokens_per_crop).to(device)  # nothing derived yet
            with PhaseMemory(device) as memory:
                _sync(device)
                start = time.perf_counter()
                mask = build_proxyv_plan(layout, num_proxies, dtype, backend).attention_mask
                _sync(device)
                elapsed = time.perf_counter() - start
            if round_index >= warmup:
                samples.append(elapsed)
                peaks.append(memory.peak_mb)
        rows.append({"mask": rendering, "backend": backend, "median_ms": 1e3 * statistics.median(samples),
                     "min_ms": 1e3 * min(samples), "max_ms": 1e3 * max(samples), "mask_mb": mask_megabytes(mask),
                     "peak_mb": max(peaks)})
    return rows


def format_mask_build(rows: list[dict]) -> str:
    """A Markdown table of `measure_mask_build`'s rows."""
    lines = ["| ProxyV mask | build ms median (min-max) | mask MB held | peak MB while building |", "|---|---|---|---|"]
    lines += [f"| {row['mask']} | {row['median_ms']:.2f} ({row['min_ms']:.2f}-{row['max_ms']:.2f}) | "
              f"{row['mask_mb']:.2f} | {row['peak_mb']:.1f} |" for row in rows]
    return "\n".join(lines)
