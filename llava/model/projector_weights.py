"""Stage-1 hand-off: the trainable multimodal weights saved to / loaded from `mm_projector.bin`."""

import logging

import torch

logger = logging.getLogger(__name__)


def load_mm_projector_weights(model, path: str) -> set[str]:
    """Load a stage-1 `mm_projector.bin` (full parameter names) into `model`; returns the names loaded.

    Every name in the file must exist in the model with the same shape, else a ValueError says which.
    """
    weights = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    unknown = sorted(k for k in weights if k not in params)
    if unknown:
        raise ValueError(f"{path} holds weights this model does not have, e.g. {unknown[:5]}; is it from another config?")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(params[k].shape)}" for k, v in weights.items()
             if tuple(v.shape) != tuple(params[k].shape)]
    if wrong:
        raise ValueError(f"{path} has weights of the wrong shape: {wrong[:5]}.")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].dtype))
    logger.info("Loaded %d multimodal weights from %s", len(weights), path)
    return set(weights)
