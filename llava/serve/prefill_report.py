"""What one prefill of a prompt costs, in words a user reads under an answer: crops, vision tokens,
prefill time and, for a ProxyV / PyramidDrop / VisionZip model, its total prefill FLOPs (vision tower
+ projector + LLM + LM head, `llava.eval.flops.analytic_prefill_flops`) against the same model run
dense (`llava.model.dense_twin`), optionally with the dense prefill timed on the same input.

    prefill 0.42 s · 2 880 vision tokens in 5 crops · 9.1 TFLOPs, 46% fewer than the dense model (16.8 TFLOPs)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval.flops import analytic_prefill_flops
from llava.model.dense_twin import dense_config, is_dense
from llava.model.image_merge import FLAT_NEWLINE
from llava.serve.inference import image_tokens


@dataclass
class PrefillReport:
    """One prompt's prefill: sizes, seconds, FLOPs (None where not known) and the dense comparison."""

    crops: int
    vision_tokens: int
    text_tokens: int
    prefill_s: float | None = None
    flops: int | None = None
    dense_flops: int | None = None  # None for a dense model: nothing to compare with
    flops_problem: str | None = None  # why FLOPs could not be counted
    timed_s: float | None = None  # this model's prefill, timed as the dense one was
    dense_timed_s: float | None = None

    def line(self) -> str:
        """The report as one line of text."""
        parts = []
        if self.prefill_s is not None:
            parts.append(f"prefill {self.prefill_s:.2f} s")
        if self.crops:
            parts.append(f"{_count(self.vision_tokens)} vision tokens in {self.crops} crop{'s' * (self.crops != 1)}")
        else:
            parts.append("no image")
        parts.append(f"{_count(self.text_tokens)} text tokens")
        if self.flops_problem:
            parts.append(f"FLOPs not counted ({self.flops_problem})")
        elif self.flops is not None and self.dense_flops is None:
            parts.append(f"{_flops(self.flops)} (a dense model)")
        elif self.flops is not None:
            saving = 1 - self.flops / self.dense_flops
            parts.append(f"{_flops(self.flops)}, {100 * saving:.0f}% fewer than the dense model "
                         f"({_flops(self.dense_flops)})")
        if self.dense_timed_s is not None:
            change = 100 * (1 - self.timed_s / self.dense_timed_s)
            parts.append(f"timed again on this input: {self.timed_s:.2f} s against {self.dense_timed_s:.2f} s "
                         f"dense ({change:.0f}% less time)")
        return " · ".join(parts)


def _count(value: int) -> str:
    return f"{value:,}".replace(",", "\u2009")


def _flops(value: int) -> str:
    for scale, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs")):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} FLOPs"


def prompt_sizes(input_ids: torch.Tensor, pixels, model, image_sizes=None) -> tuple[int, int, int]:
    """(text tokens, crops, vision tokens the LLM reads) of `input_ids` [T] with `pixels` (as
    `pixels_for_model` returns them, or None)."""
    text_tokens = int((input_ids != IMAGE_TOKEN_INDEX).sum())
    if pixels is None:
        return text_tokens, 0, 0
    crops, vision, _ = image_tokens(pixels, model, image_sizes)
    return text_tokens, crops, vision


def prefill_flops(config, vision_config: dict, text_tokens: int, crops: int) -> int:
    """Total prefill FLOPs of `config` for the sizes; the loaded tower's config fills in a config
    that only names its tower."""
    if not getattr(config, "mm_vision_tower_config", None):
        config = copy.copy(config)
        config.mm_vision_tower_config = vision_config
    return sum(analytic_prefill_flops(config, text_tokens, crops).values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def timed_prefill(model, input_ids: torch.Tensor, pixels, image_sizes) -> float:
    """Seconds of one prefill forward (vision tower, projector, LLM with its KV cache, last logits)."""
    _sync(model.device)
    start = time.perf_counter()
    model(input_ids=input_ids[None].to(model.device), images=pixels, image_sizes=image_sizes, use_cache=True,
          logits_to_keep=1)
    _sync(model.device)
    return time.perf_counter() - start


def prefill_report(model, input_ids: torch.Tensor, pixels, prefill_s: float | None = None,
                   image_sizes=None) -> PrefillReport:
    """The sizes and FLOPs of prefilling `input_ids` [T] with `pixels` on `model`."""
    text_tokens, crops, vision_tokens = prompt_sizes(input_ids, pixels, model, image_sizes)
    report = PrefillReport(crops, vision_tokens, text_tokens, prefill_s)
    vision_config = model.get_vision_tower().config.to_dict() if crops else {}
    if crops and model.config.mm_patch_merge_type != FLAT_NEWLINE:
        report.flops_problem = f"counted for the {FLAT_NEWLINE} layout only, not {model.config.mm_patch_merge_type}"
        return report
    try:
        report.flops = prefill_flops(model.config, vision_config, text_tokens, crops)
        if not is_dense(model.config):
            dense = dense_config(model.config, vision_config or None)
            report.dense_flops = prefill_flops(dense, vision_config, text_tokens, crops)
    except ValueError as error:  # a projector or model type the analytic count does not know
        report.flops, report.dense_flops, report.flops_problem = None, None, str(error)
    return report


def time_against_dense(report: PrefillReport, model, twin, input_ids: torch.Tensor, pixels, image_sizes) -> None:
    """Time the prefill of `model` and of its dense `twin` on the same input, each once after a warm-up
    run of both, and record both in `report`."""
    for runner in (model, twin):
        timed_prefill(runner, input_ids, pixels, image_sizes)
    report.timed_s = timed_prefill(model, input_ids, pixels, image_sizes)
    report.dense_timed_s = timed_prefill(twin, input_ids, pixels, image_sizes)
