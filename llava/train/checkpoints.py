"""Complete checkpoints: a `checkpoint-N` folder counts only once its marker file was written.

The trainer writes `COMPLETE_MARKER` last, after the model, optimizer, scheduler, RNG and trainer
state files are on disk (and, with several processes, after all ranks wrote theirs). A run killed
while saving leaves a folder without the marker; resuming skips it and takes the newest complete one.
transformers deletes old checkpoints (`--save_total_limit`) before the marker of the new one is
written, so with a limit of 1 a kill in that short window leaves no complete checkpoint; use 2 or more.
"""

import json
import logging
import os
import re

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint_dir: str, global_step: int) -> None:
    """Write the marker atomically (temporary file, fsync, rename) so it is never half-written."""
    marker = os.path.join(checkpoint_dir, COMPLETE_MARKER)
    temporary = marker + ".tmp"
    files = sorted(name for name in os.listdir(checkpoint_dir) if not name.startswith(COMPLETE_MARKER))
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"global_step": global_step, "files": files}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, marker)


def is_complete(checkpoint_dir: str) -> bool:
    """The marker exists, names the files it vouches for, and they and the trainer state are present."""
    try:
        with open(os.path.join(checkpoint_dir, COMPLETE_MARKER), encoding="utf-8") as handle:
            marker = json.load(handle)
        with open(os.path.join(checkpoint_dir, TRAINER_STATE_FILE), encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return all(os.path.exists(os.path.join(checkpoint_dir, name)) for name in marker.get("files", []))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir`, logging each incomplete one it passes over."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT_NAME.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if is_complete(path):
            return path
        logger.warning("Skipping incomplete checkpoint %s (no %s or files missing: the run was stopped while "
                       "saving it); delete it, or pass --resume_from_checkpoint %s if you know it is whole.",
                       path, COMPLETE_MARKER, path)
    return None
