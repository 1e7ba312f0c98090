"""Guards of a training run against bad data: skipped-record accounting and non-finite losses.

`SkipTracker` counts records the dataset skipped (they arrive with each batch, so DataLoader
workers are counted too), stops the run when an epoch skips more than `max_fraction` of the
dataset, and writes the end-of-training summary. `check_finite_loss` stops the run on a NaN/inf
loss, naming the step and the batch's record ids. Under several processes both decisions are
all-reduced, so every rank stops at the same step and none waits forever for the others.
"""

import logging
from collections import Counter

import torch

from llava.errors import TrainingStopped

logger = logging.getLogger(__name__)
MAX_IDS_IN_SUMMARY = 20


def _sum_over_ranks(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


class SkipTracker:
    """Skipped records of this run: per-kind counts, ids (this rank), and the bad-fraction limit."""

    def __init__(self, dataset_size: int, max_fraction: float):
        if not 0 <= max_fraction <= 1:
            raise ValueError(f"--max_bad_sample_fraction must be in [0, 1], got {max_fraction}.")
        self.dataset_size = dataset_size
        self.max_fraction = max_fraction
        self.kinds: Counter = Counter()
        self.ids: list[str] = []
        self.epoch_total = 0  # over all ranks, in the current epoch
        self.run_total = 0
        self.epoch = 0

    def add(self, skipped: list, loss: torch.Tensor, step: int, epoch: int, batch_ids: list) -> None:
        """Record this batch's skips and check the loss; raises `TrainingStopped` to stop the run."""
        self.kinds.update(kind for _, kind in skipped)
        self.ids.extend(str(name) for name, _ in skipped)
        non_finite, skips = _sum_over_ranks([float(not torch.isfinite(loss.detach()).all()), len(skipped)],
                                            loss.device)
        if non_finite:
            raise TrainingStopped(
                f"training stopped: the loss is {loss.detach().float().item()} (NaN/inf on {int(non_finite)} process(es)) at step {step}; "
                f"this process's batch holds records {batch_ids}. Check those records, lower the learning rate, "
                "or use bf16 instead of fp16; resume from the last checkpoint once fixed."
            )
        if epoch != self.epoch:
            self.epoch, self.epoch_total = epoch, 0
        self.epoch_total += int(skips)
        self.run_total += int(skips)
        if self.epoch_total > self.max_fraction * self.dataset_size:
            raise TrainingStopped(
                f"training stopped: {self.epoch_total} of {self.dataset_size} records were skipped as unusable in epoch {epoch}, "
                f"more than --max_bad_sample_fraction {self.max_fraction:g}. {self.summary()} "
                "Run python -m llava.train.check_data on the data to list every problem."
            )

    def summary(self) -> str:
        if not self.run_total:
            return "No record was skipped."
        kinds = ", ".join(f"{kind}: {count}" for kind, count in self.kinds.most_common())
        ids = ", ".join(self.ids[:MAX_IDS_IN_SUMMARY]) + (" ..." if len(self.ids) > MAX_IDS_IN_SUMMARY else "")
        return (f"Skipped {self.run_total} unusable records over all processes and epochs (this process: {kinds}; "
                f"ids {ids}).")
