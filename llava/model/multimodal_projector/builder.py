"""Projector from vision features to the LLM's hidden size: `linear`, `mlp{N}x_gelu`, `identity`."""

import re

from torch import nn

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")
KNOWN_PROJECTORS = ("linear", "mlp{N}x_gelu (e.g. mlp2x_gelu)", "identity")


def build_vision_projector(config) -> nn.Module:
    """Projector for `config.mm_projector_type`, mapping `mm_hidden_size` to `hidden_size`."""
    projector_type = getattr(config, "mm_projector_type", "linear")
    vision_size, hidden_size = config.mm_hidden_size, config.hidden_size
    if projector_type == "linear":
        return nn.Linear(vision_size, hidden_size)
    if projector_type == "identity":
        if vision_size != hidden_size:
            raise ValueError(
                f"The identity projector needs mm_hidden_size == hidden_size, got {vision_size} and {hidden_size}."
            )
        return nn.Identity()
    match = _MLP_GELU.match(projector_type or "")
    if match:
        depth = int(match.group(1))
        if depth < 1:
            raise ValueError(f"Projector '{projector_type}' needs at least one layer.")
        layers: list[nn.Module] = [nn.Linear(vision_size, hidden_size)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        return nn.Sequential(*layers)
    raise ValueError(f"Unknown mm_projector_type '{projector_type}'. Known: {', '.join(KNOWN_PROJECTORS)}.")
