"""Stage-1 hand-off: the trainable multimodal weights saved to / loaded from `mm_projector.bin`."""

import logging

import torch

from .zero3_params import copy_into, full_state

logger = logging.getLogger(__name__)


def load_mm_projector_weights(model, path: str) -> set[str]:
    """Load a stage-1 `mm_projector.bin` (full parameter names) into `model`; returns the names loaded.

    Every name in the file must exist in the model with the same shape, else a ValueError says which.
    """
    weights = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    shapes = {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in params.items()}
    unknown = sorted(k for k in weights if k not in params)
    if unknown:
        raise ValueError(f"{path} holds weights this model does not have, e.g. {unknown[:5]}; is it from another config?")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {shapes[k]}" for k, v in weights.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        raise ValueError(f"{path} has weights of the wrong shape: {wrong[:5]}.")
    copy_into(params, weights)
    logger.info("Loaded %d multimodal weights from %s", len(weights), path)
    return set(weights)


def save_mm_projector_weights(model, path: str, prefixes: tuple[str, ...]) -> list[str]:
    """Save the full values of the parameters under `prefixes` to `path` (stage 1's hand-off)."""
    named = {name: p for name, p in model.named_parameters() if name.startswith(prefixes)}
    torch.save(full_state(named), path)
    logger.info("Saved %d multimodal weights to %s", len(named), path)
    return sorted(named)
