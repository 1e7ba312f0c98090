"""The tiny CLIP's pretraining on the training pictures (`llava.tiny.pretrain_clip`)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionModel

from llava.tiny.dataset import generate_tiny_dataset
from llava.tiny.images import Scene, SceneObject
from llava.tiny.models import build_tiny_clip
from llava.tiny.pretrain_clip import (
    CELL_CONTENTS,
    CELL_NAMES,
    COLOR_NAMES,
    load_training_scenes,
    patch_targets,
    pretrain_tiny_clip,
)

SCENE = Scene(width=336, height=336, background="white",
              objects=(SceneObject("red", "circle", "top left"), SceneObject("blue", "triangle", "bottom right")),
              text="AB", text_position="center", text_color="black")


def test_patch_targets_name_each_patchs_cell():
    targets = patch_targets(SCENE, grid=6)  # each cell is 2x2 patches
    content = targets["content"].view(6, 6)
    color = targets["color"].view(6, 6)
    cell = targets["cell"].view(6, 6)
    assert (content[:2, :2] == CELL_CONTENTS.index("circle")).all() and (color[:2, :2] == COLOR_NAMES.index("red")).all()
    assert (content[4:, 4:] == CELL_CONTENTS.index("triangle")).all()
    assert (content[2:4, 2:4] == CELL_CONTENTS.index("text")).all()
    assert (color[2:4, 2:4] == COLOR_NAMES.index("black")).all()
    assert content[0, 2:].eq(CELL_CONTENTS.index("nothing")).all() and color[0, 2:].eq(COLOR_NAMES.index("white")).all()
    assert (targets["background"] == COLOR_NAMES.index("white")).all()
    assert cell[0, 0] == CELL_NAMES.index("top left") and cell[5, 5] == CELL_NAMES.index("bottom right")
    assert cell[2, 5] == CELL_NAMES.index("right") and cell[5, 0] == CELL_NAMES.index("bottom left")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_tiny_dataset(tmp_path_factory.mktemp("clip-data"), num_scenes=24, seed=1, curriculum_scale=0.01)


def test_training_scenes_are_the_pictures_rendered(tiny_data):
    scenes = load_training_scenes(tiny_data["root"])
    assert len(scenes) >= 24 and all(path.is_file() for path, _ in scenes)
    assert scenes[0][0].name == "scene_00000.png"


def test_pretraining_lowers_the_heads_loss_and_saves_the_tower(tiny_data, tmp_path):
    clip_dir = build_tiny_clip(tmp_path / "clip", seed=0)
    before = CLIPVisionModel.from_pretrained(clip_dir).state_dict()
    losses = pretrain_tiny_clip(clip_dir, tiny_data["root"], steps=40, batch_size=8, learning_rate=3e-3)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0]
    after = CLIPVisionModel.from_pretrained(clip_dir).state_dict()
    assert not torch.equal(before["embeddings.patch_embedding.weight"], after["embeddings.patch_embedding.weight"])


def test_pretraining_is_deterministic(tiny_data, tmp_path):
    runs = [pretrain_tiny_clip(build_tiny_clip(tmp_path / name, seed=0), tiny_data["root"], steps=4, batch_size=8)
            for name in ("a", "b")]
    assert runs[0] == runs[1]
    weights = [CLIPVisionModel.from_pretrained(tmp_path / name).state_dict() for name in ("a", "b")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_pretraining_needs_steps(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="steps >= 1"):
        pretrain_tiny_clip(build_tiny_clip(tmp_path / "clip"), tiny_data["root"], steps=0)
