"""Stage-1 hand-off: the trainable multimodal weights saved to / loaded from `mm_projector.bin`."""

import logging
import os

import torch

from llava.errors import DamagedInputError, UsageError, UserError, one_line, torch_load_file

from .zero3_params import copy_into, full_state

logger = logging.getLogger(__name__)


def load_mm_projector_weights(model, path: str, params: dict[str, torch.Tensor] | None = None) -> set[str]:
    """Load a stage-1 `mm_projector.bin` (full parameter names) into `model`; returns the names loaded.
    (`params` maps those names to the model's parameters where its own names differ, as under a LoRA
    wrapper; a LoRA run's `non_lora_trainables.bin` is read the same way.)

    A missing file is a `UsageError`; one that is not a torch checkpoint of named tensors, or whose names
    or shapes do not fit the model, a `DamagedInputError` saying which.
    """
    if not os.path.isfile(path):
        raise UsageError(f"projector weights file {path} does not exist; point at the mm_projector.bin that stage 1 "
                         "wrote.")
    try:
        weights = torch_load_file(path, "projector weights file")
    except UserError:
        raise
    except Exception as error:  # torch's readers fail on other garbage with OSError, KeyError, IndexError, ...
        raise DamagedInputError(f"projector weights file {path} is not a readable torch checkpoint "
                                f"({type(error).__name__}: {one_line(error)[:120]}); point at the mm_projector.bin that stage 1 wrote.") from error
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise DamagedInputError(f"projector weights file {path} does not hold named tensors; point at the "
                                "mm_projector.bin that stage 1 wrote.")
    params = dict(model.named_parameters()) if params is None else params
    shapes = {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in params.items()}
    unknown = sorted(k for k in weights if k not in params)
    if unknown:
        raise DamagedInputError(f"{path} holds weights this model does not have, e.g. {unknown[:5]}; is it from "
                                "another config?")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {shapes[k]}" for k, v in weights.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        raise DamagedInputError(f"{path} has weights of the wrong shape: {wrong[:5]}; is it from another config?")
    copy_into(params, weights)
    logger.info("Loaded %d multimodal weights from %s", len(weights), path)
    return set(weights)


def save_mm_projector_weights(model, path: str, prefixes: tuple[str, ...]) -> list[str]:
    """Save the full values of the parameters under `prefixes` to `path` (stage 1's hand-off)."""
    named = {name: p for name, p in model.named_parameters() if name.startswith(prefixes)}
    torch.save(full_state(named), path)
    logger.info("Saved %d multimodal weights to %s", len(named), path)
    return sorted(named)
