"""Pretrain the tiny CLIP vision tower on the tiny training pictures, as real runs start from a trained CLIP.

A random tower's patch features hold the pixels' colours but hardly what shape a patch is part of,
so a tiny LLaVA trained on top of it learns the background colour and little else. Real LLaVA starts
from CLIP, whose features already name what each patch shows. This gives the tiny tower that start
in about a minute: every patch token of the layer LLaVA reads (`mm_vision_select_layer` -2) is
trained, through linear heads thrown away afterwards, to tell what the grid cell it lies in holds
(nothing, a circle, a square, a triangle or text), that thing's colour, the background colour and
which of the nine cells it is.

Only the training pictures are used (`tiny_scenes.json` in the tiny data folder says what each
shows), resized to the tower's square input as the CLIP processor's base view does. The held-out
evaluation scenes are never shown. Deterministic for a given seed; the global RNG is left alone.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm
from transformers import CLIPVisionModel

from llava.errors import read_json_file
from llava.tiny.dataset import SCENES_FILENAME
from llava.tiny.images import COLORS, POSITIONS, SHAPES, Scene, scene_from_dict
from llava.tiny.models import tiny_clip_image_processor

logger = logging.getLogger(__name__)

SELECT_LAYER = -2  # the layer the launch scripts' --mm_vision_select_layer reads
CELL_CONTENTS = ("nothing", *SHAPES, "text")
COLOR_NAMES = tuple(COLORS)
CELL_NAMES = tuple(POSITIONS)
CELL_AT = {rc: name for name, rc in POSITIONS.items()}


def patch_targets(scene: Scene, grid: int) -> dict[str, torch.Tensor]:
    """Per patch of a `grid` x `grid` view of the whole scene, [grid * grid] each: what its cell holds,
    that thing's colour (the background's for an empty cell), the background colour, the cell."""
    contents, colors, cells = [], [], []
    for row in range(grid):
        for col in range(grid):
            name = CELL_AT[(row * 3 // grid, col * 3 // grid)]
            obj = scene.object_at(name)
            if obj is not None:
                content, color = obj.shape, obj.color
            elif scene.text and scene.text_position == name:
                content, color = "text", scene.text_color
            else:
                content, color = "nothing", scene.background
            contents.append(CELL_CONTENTS.index(content))
            colors.append(COLOR_NAMES.index(color))
            cells.append(CELL_NAMES.index(name))
    background = [COLOR_NAMES.index(scene.background)] * (grid * grid)
    return {"content": torch.tensor(contents), "color": torch.tensor(colors),
            "background": torch.tensor(background), "cell": torch.tensor(cells)}


PROCESSOR = tiny_clip_image_processor()
PIXEL_MEAN = torch.tensor(PROCESSOR.image_mean)[:, None, None]  # [3, 1, 1]
PIXEL_STD = torch.tensor(PROCESSOR.image_std)[:, None, None]  # [3, 1, 1]


def tower_input(image: Image.Image, image_size: int) -> torch.Tensor:
    """The picture resized to the tower's square input and normalised as the CLIP processor does, [3, S, S]."""
    image = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, S, S]
    return (pixels - PIXEL_MEAN) / PIXEL_STD


class PatchHeads(nn.Module):
    """One linear classifier per target, applied to every patch token."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        sizes = {"content": len(CELL_CONTENTS), "color": len(COLOR_NAMES), "background": len(COLOR_NAMES),
                 "cell": len(CELL_NAMES)}
        self.heads = nn.ModuleDict({name: nn.Linear(hidden_size, size) for name, size in sizes.items()})

    def loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over targets; `features` [B, N, D], each target [B, N]."""
        losses = [nn.functional.cross_entropy(head(features).flatten(0, 1), targets[name].flatten())
                  for name, head in self.heads.items()]
        return sum(losses) / len(losses)


def load_training_scenes(data_dir: str | Path) -> list[tuple[Path, Scene]]:
    """(picture path, scene) for every training picture listed in `data_dir`/tiny_scenes.json."""
    data_dir = Path(data_dir)
    records = read_json_file(data_dir / SCENES_FILENAME, "tiny scene list")
    return [(data_dir / record["image"], scene_from_dict({k: v for k, v in record.items() if k != "image"}))
            for record in records]


def pretrain_tiny_clip(clip_dir: str | Path, data_dir: str | Path, steps: int, seed: int = 0, batch_size: int = 32,
                       learning_rate: float = 2e-3) -> list[float]:
    """Train the tower saved in `clip_dir` on the training pictures of `data_dir` for `steps` AdamW
    steps (one-cycle schedule) and save it back. Returns the loss of every step."""
    if steps <= 0:
        raise ValueError(f"pretraining the tiny CLIP needs steps >= 1, got {steps}")
    clip_dir = Path(clip_dir)
    model = CLIPVisionModel.from_pretrained(clip_dir).train()
    config = model.config
    grid = config.image_size // config.patch_size
    scenes = load_training_scenes(data_dir)
    inputs, targets = [], []
    for path, scene in tqdm(scenes, desc="reading the training pictures for the tiny CLIP", unit="img", leave=False):
        with Image.open(path) as image:
            inputs.append(tower_input(image, config.image_size))
        targets.append(patch_targets(scene, grid))
    rng = random.Random(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = PatchHeads(config.hidden_size)
        parameters = list(model.parameters()) + list(heads.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps,
                                                       pct_start=0.05)
        losses = []
        progress = tqdm(range(steps), desc="pretraining the tiny CLIP on the training pictures", unit="step")
        for _ in progress:
            batch = rng.sample(range(len(scenes)), k=min(batch_size, len(scenes)))
            pixels = torch.stack([inputs[i] for i in batch])  # [B, 3, S, S]
            hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[SELECT_LAYER]  # [B, 1+N, D]
            batch_targets = {name: torch.stack([targets[i][name] for i in batch]) for name in targets[0]}
            loss = heads.loss(hidden[:, 1:], batch_targets)  # patch tokens only, [B, N, D]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval().save_pretrained(clip_dir)
    tail = losses[-50:]
    logger.info("Pretrained the tiny CLIP on %d training pictures for %d steps: loss %.3f -> %.3f (mean of the "
                "last %d steps)", len(scenes), steps, losses[0], sum(tail) / len(tail), len(tail))
    return losses


__all__ = ["load_training_scenes", "patch_targets", "pretrain_tiny_clip"]
