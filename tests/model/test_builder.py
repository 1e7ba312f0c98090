"""`load_pretrained_model` on tiny checkpoints saved in-process, and the vision projector builder.

Expected weights are compared with the tensors that were saved; error cases check that the
message names what is wrong (the folder, the missing keys, the known model types).
"""

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPVisionModel, LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.model import LlavaLlamaForCausalLM
from llava.model.builder import load_pretrained_model
from llava.model.multimodal_projector.builder import build_vision_projector
from tests.model_fixtures import (
    PAD_ID,
    VOCAB_SIZE,
    plain_llama_config,
    save_tiny_checkpoint,
    save_tiny_clip,
    tiny_llava_config,
    tiny_llava_model,
    tiny_wordlevel_tokenizer,
)

SMALL = 56
PROJECTOR_KEYS = ("model.mm_projector.", "model.image_newline")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, checkpoint folder) of a tiny full LLaVA checkpoint."""
    model = tiny_llava_model(seed=2, image_size=SMALL, tokenizer_model_max_length=1024)
    path = save_tiny_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "llava-tiny")
    return model, path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=9, image_size=SMALL)


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def assert_state_equal(model, expected: dict, prefixes=None):
    state = model.state_dict()
    keys = [k for k in expected if prefixes is None or k.startswith(prefixes)]
    assert keys
    for key in keys:
        assert torch.equal(state[key], expected[key]), key


# --- loading a full checkpoint ----------------------------------------------------------------------


def test_load_returns_tokenizer_model_processor_and_context_len(saved):
    source, path = saved
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        str(path), None, "llava-tiny", device="cpu"
    )
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.pad_token_id == PAD_ID
    assert type(model) is LlavaLlamaForCausalLM
    assert not model.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"
    assert isinstance(image_processor, CLIPImageProcessorPil)
    assert image_processor.crop_size["height"] == SMALL
    assert context_len == 1024
    assert_state_equal(model, source.state_dict())


def test_context_len_falls_back_to_max_positions(tmp_path):
    model = tiny_llava_model(seed=2, image_size=SMALL)
    path = save_tiny_checkpoint(model, tmp_path / "ckpt")
    _, _, _, context_len = load_pretrained_model(str(path), device="cpu")
    assert context_len == model.config.max_position_embeddings


def test_folder_without_config_raises(tmp_path):
    folder = tmp_path / "empty-folder"
    folder.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(folder))):
        load_pretrained_model(str(folder), device="cpu")


@pytest.mark.parametrize("relative", [False, True])
def test_missing_local_path_raises(tmp_path, relative, monkeypatch):
    if relative:
        monkeypatch.chdir(tmp_path)
        path = "./no-such-checkpoint"
    else:
        path = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(ValueError, match=re.escape(path)):
        load_pretrained_model(path, device="cpu")


def test_llama_model_type_raises_listing_known(saved, tmp_path):
    path = copy_checkpoint(saved[1], tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"Unknown model_type 'llama'.*llava_llama"):
        load_pretrained_model(str(path), device="cpu")


def test_unregistered_model_type_raises_listing_known(saved, tmp_path):
    path = copy_checkpoint(saved[1], tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llava_gemma"  # a LLaVA-style model type this package does not provide
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"llava_gemma.*llava_llama.*llava_qwen"):
        load_pretrained_model(str(path), device="cpu")


@pytest.mark.parametrize(
    "key", ["model.layers.1.mlp.up_proj.weight", "model.mm_projector.2.bias", "model.image_newline"]
)
def test_checkpoint_missing_weight_raises(saved, tmp_path, key):
    path = copy_checkpoint(saved[1], tmp_path / "ckpt")
    weights = load_file(path / "model.safetensors")
    del weights[key]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape(key)):
        load_pretrained_model(str(path), device="cpu")


def test_checkpoint_with_extra_weight_raises(saved, tmp_path):
    path = copy_checkpoint(saved[1], tmp_path / "ckpt")
    weights = load_file(path / "model.safetensors")
    weights["model.vision_mlp_layers.0.input_proj.weight"] = torch.zeros(4, 4)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape("model.vision_mlp_layers.0.input_proj.weight")):
        load_pretrained_model(str(path), device="cpu")


def test_tower_weights_come_from_mm_vision_tower_when_checkpoint_lacks_them(tmp_path, clip_dir):
    model = tiny_llava_model(seed=4, image_size=SMALL, mm_vision_tower=str(clip_dir))
    path = save_tiny_checkpoint(model, tmp_path / "ckpt")
    weights = load_file(path / "model.safetensors")
    weights = {k: v for k, v in weights.items() if not k.startswith("model.vision_tower.")}
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    _, loaded, _, _ = load_pretrained_model(str(path), device="cpu")
    tower = CLIPVisionModel.from_pretrained(clip_dir).state_dict()
    loaded_tower = loaded.get_vision_tower().vision_tower.state_dict()
    assert tower.keys() == loaded_tower.keys()
    for key in tower:
        assert torch.equal(loaded_tower[key], tower[key]), key
    assert_state_equal(loaded, weights)


# --- stage-1 hand-off: mm_projector.bin + model_base ------------------------------------------------


def write_stage1_folder(folder, clip_dir, seed=7):
    """A stage-1 output folder: the config and the trainable multimodal weights only."""
    stage1 = tiny_llava_model(seed=seed, image_size=SMALL, mm_vision_tower=str(clip_dir))
    weights = {k: v.clone() for k, v in stage1.state_dict().items() if k.startswith(PROJECTOR_KEYS)}
    assert set(weights) == {
        "model.mm_projector.0.weight",
        "model.mm_projector.0.bias",
        "model.mm_projector.2.weight",
        "model.mm_projector.2.bias",
        "model.image_newline",
    }
    folder.mkdir(parents=True)
    stage1.config.save_pretrained(folder)
    torch.save(weights, folder / "mm_projector.bin")
    return weights


def test_stage1_projector_on_full_checkpoint_base(saved, tmp_path, clip_dir):
    base_model, base_path = saved
    projector = write_stage1_folder(tmp_path / "stage1", clip_dir)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(tmp_path / "stage1"), model_base=str(base_path), device="cpu"
    )
    assert_state_equal(model, projector)
    base_state = base_model.state_dict()
    assert_state_equal(model, {k: v for k, v in base_state.items() if not k.startswith(PROJECTOR_KEYS)})
    assert not torch.equal(model.model.image_newline, base_model.model.image_newline)
    assert len(tokenizer) == VOCAB_SIZE
    assert isinstance(image_processor, CLIPImageProcessorPil)


def test_stage1_projector_on_plain_llama_base(tmp_path, clip_dir):
    """The usual LLaVA hand-off: a plain LLM base, the tower from mm_vision_tower, the projector file."""
    projector = write_stage1_folder(tmp_path / "stage1", clip_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        llm = LlamaForCausalLM(plain_llama_config(tiny_llava_config(image_size=SMALL))).eval()
    llm.save_pretrained(tmp_path / "base")
    tiny_wordlevel_tokenizer().save_pretrained(tmp_path / "base")

    _, model, _, _ = load_pretrained_model(
        str(tmp_path / "stage1"), model_base=str(tmp_path / "base"), device="cpu"
    )
    assert_state_equal(model, projector)
    assert_state_equal(model, llm.state_dict())
    tower = CLIPVisionModel.from_pretrained(clip_dir).state_dict()
    loaded_tower = model.get_vision_tower().vision_tower.state_dict()
    assert all(torch.equal(loaded_tower[k], v) for k, v in tower.items())


def test_stage1_without_projector_file_raises(saved, tmp_path):
    folder = tmp_path / "stage1"
    folder.mkdir()
    saved[0].config.save_pretrained(folder)
    with pytest.raises(ValueError, match="mm_projector.bin"):
        load_pretrained_model(str(folder), model_base=str(saved[1]), device="cpu")


def test_stage1_projector_of_wrong_shape_raises(saved, tmp_path, clip_dir):
    folder = tmp_path / "stage1"
    weights = write_stage1_folder(folder, clip_dir)
    weights["model.mm_projector.0.weight"] = torch.zeros(3, 3)
    torch.save(weights, folder / "mm_projector.bin")
    with pytest.raises(ValueError, match=re.escape("model.mm_projector.0.weight")):
        load_pretrained_model(str(folder), model_base=str(saved[1]), device="cpu")


# --- vision projector builder -----------------------------------------------------------------------


def projector_config(kind, vision=32, hidden=64):
    return SimpleNamespace(mm_projector_type=kind, mm_hidden_size=vision, hidden_size=hidden)


def test_linear_projector():
    projector = build_vision_projector(projector_config("linear"))
    assert isinstance(projector, nn.Linear)
    assert (projector.in_features, projector.out_features) == (32, 64)


@pytest.mark.parametrize(("kind", "linears"), [("mlp2x_gelu", [0, 2]), ("mlp3x_gelu", [0, 2, 4])])
def test_mlp_gelu_projector(kind, linears):
    projector = build_vision_projector(projector_config(kind))
    assert isinstance(projector, nn.Sequential)
    assert len(projector) == 2 * len(linears) - 1
    names = {name for name, _ in projector.named_parameters()}
    assert names == {f"{i}.{p}" for i in linears for p in ("weight", "bias")}
    for i, layer in enumerate(projector):
        if i in linears:
            assert isinstance(layer, nn.Linear)
            assert layer.in_features == (32 if i == 0 else 64) and layer.out_features == 64
        else:
            assert isinstance(layer, nn.GELU) and layer.approximate == "none"
    x = torch.randn(2, 5, 32)
    expected = x
    for i, layer in enumerate(projector):
        expected = (
            expected @ layer.weight.T + layer.bias if i in linears else torch.nn.functional.gelu(expected)
        )
    torch.testing.assert_close(projector(x), expected)


def test_identity_projector():
    assert isinstance(build_vision_projector(projector_config("identity", 64, 64)), nn.Identity)
    with pytest.raises(ValueError, match="mm_hidden_size"):
        build_vision_projector(projector_config("identity", 32, 64))


@pytest.mark.parametrize("kind", ["mlp2x_relu", "conv", "mlp0x_gelu"])
def test_unknown_projector_raises(kind):
    with pytest.raises(ValueError, match=re.escape(kind)):
        build_vision_projector(projector_config(kind))


def test_tower_weights_under_vision_model_prefix_load(saved, tmp_path):
    """LLaVA checkpoints name the tower `model.vision_tower.vision_tower.vision_model.*` (docs/design.md §5.3)."""
    source, src = saved
    path = copy_checkpoint(src, tmp_path / "ckpt")
    weights = load_file(path / "model.safetensors")
    prefix = "model.vision_tower.vision_tower."
    renamed = {
        (prefix + "vision_model." + k[len(prefix) :] if k.startswith(prefix) else k): v
        for k, v in weights.items()
    }
    assert renamed.keys() != weights.keys()
    save_file(renamed, path / "model.safetensors", metadata={"format": "pt"})
    _, model, _, _ = load_pretrained_model(str(path), device="cpu")
    assert_state_equal(model, source.state_dict())
