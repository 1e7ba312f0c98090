"""What the golden-output tests share (the authors' Llama release in ../shared/golden, the Qwen2 /
Phi-3 releases in tests/data/golden_families): copying a golden checkpoint with its `CLIP_DIR`
placeholder filled in, the inputs of a case, and the check that a loaded model holds exactly the
file's tensors under the release names."""

import json
import shutil
from functools import cache
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

from llava.mm_utils import process_images
from llava.model.builder import load_pretrained_model

# transformers 5's `CLIPVisionModel` has no `vision_model.` level; checkpoints (LLaVA's, the
# authors') name the tower's weights with it.
TOWER_IN_FILE = "model.vision_tower.vision_tower.vision_model."
TOWER_IN_MODEL = "model.vision_tower.vision_tower."


def case_id(case) -> str:
    return f"{case['checkpoint']}-{Path(case['image']).stem}"


def copy_golden_checkpoints(names, source: Path, clip: Path, target_root: Path) -> dict[str, Path]:
    """Each checkpoint copied under `target_root` with `CLIP_DIR` pointing at the golden CLIP folder."""
    dirs = {}
    for name in sorted(names):
        target = target_root / name
        shutil.copytree(source / name, target)
        config = target / "config.json"
        text = config.read_text()
        assert '"CLIP_DIR"' in text
        config.write_text(text.replace('"CLIP_DIR"', json.dumps(str(clip.resolve()))))
        dirs[name] = target
    return dirs


def case_inputs(case, processor, config, root: Path) -> dict:
    """The model inputs of a golden case: real AnyRes crops of its image from `process_images`."""
    pixels = process_images([Image.open(root / case["image"]).convert("RGB")], processor, config)
    assert pixels.shape[:2] == (1, case["num_crops"]), pixels.shape
    assert tuple(pixels.shape[-2:]) == (336, 336)
    return {
        "input_ids": torch.tensor([case["input_ids"]]),
        "labels": torch.tensor([case["labels"]]),
        "images": pixels,
        "image_sizes": [case["image_size"]],
        "use_cache": False,
    }


def release_name(model_name: str) -> str:
    return model_name.replace(TOWER_IN_MODEL, TOWER_IN_FILE, 1) if model_name.startswith(TOWER_IN_MODEL) else model_name


def assert_all_weights_from_file(model, checkpoint_dir: Path) -> None:
    """Every tensor of the checkpoint file is a parameter of the model, with the same value, and back."""
    state = {release_name(name): tensor for name, tensor in model.state_dict().items()}
    with safe_open(str(checkpoint_dir / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
        assert names == set(state), (sorted(names - set(state))[:5], sorted(set(state) - names)[:5])
        for name in names:
            assert torch.equal(weights.get_tensor(name), state[name]), name


def golden_loader(dirs: dict[str, Path]):
    """`load(name, impl)` -> (model, processor) through our builder, each loaded once (`load.cache_clear()`
    frees them)."""

    @cache
    def load(name, impl):
        _, model, processor, _ = load_pretrained_model(str(dirs[name]), None, None, device="cpu",
                                                       attn_implementation=impl)
        return model, processor

    return load
