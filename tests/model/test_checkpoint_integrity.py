"""`load_pretrained_model` names the damaged or missing file of a checkpoint before loading it.

Each test damages one file of a copy of a tiny checkpoint saved once per module and checks the
error's type (`UsageError`: a path that is not there or not a checkpoint; `DamagedInputError`: a
checkpoint file that cannot be used) and that its message names the file.
"""

import json
import re
import shutil
import zipfile

import pytest
import torch

from llava.errors import DamagedInputError, UsageError, UserError
from llava.model.builder import load_pretrained_model
from llava.model.projector_weights import load_mm_projector_weights
from tests.model_fixtures import save_tiny_checkpoint, tiny_image_processor, tiny_llava_model

SMALL = 56
PROJECTOR_KEYS = ("model.mm_projector.", "model.image_newline")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, folder) of a tiny full checkpoint in one safetensors file."""
    model = tiny_llava_model(seed=2, image_size=SMALL)
    return model, save_tiny_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "llava-tiny")


@pytest.fixture(scope="module")
def sharded(saved, tmp_path_factory):
    """The same checkpoint in several safetensors shards with an index."""
    folder = tmp_path_factory.mktemp("sharded") / "llava-tiny-sharded"
    save_tiny_checkpoint(saved[0], folder)
    (folder / "model.safetensors").unlink()
    saved[0].save_pretrained(folder, max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


@pytest.fixture
def ckpt(saved, tmp_path):
    return shutil.copytree(saved[1], tmp_path / "ckpt")


@pytest.fixture
def stage1(saved, tmp_path):
    """A stage-1 output folder (config + mm_projector.bin) for `saved` as model_base."""
    folder = tmp_path / "stage1"
    folder.mkdir()
    saved[0].config.save_pretrained(folder)
    tiny_image_processor(SMALL).save_pretrained(folder)
    weights = {k: v.clone() for k, v in saved[0].state_dict().items() if k.startswith(PROJECTOR_KEYS)}
    torch.save(weights, folder / "mm_projector.bin")
    return folder


def load(path, model_base=None):
    return load_pretrained_model(str(path), None if model_base is None else str(model_base), device="cpu")


def raises(error_type, *names):
    """pytest.raises(error_type) whose message holds every one of `names`."""
    return pytest.raises(error_type, match="(?s)" + "".join(f"(?=.*{re.escape(str(name))})" for name in names))


def shard_names(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


# --- config and other JSON ---------------------------------------------------------------------------


def test_config_that_is_not_json(ckpt):
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text()[:-40])
    with raises(DamagedInputError, ckpt / "config.json", "not valid JSON", "line"):
        load(ckpt)


def test_config_that_is_not_an_object(ckpt):
    (ckpt / "config.json").write_text("[1, 2]")
    with raises(DamagedInputError, ckpt / "config.json", "not a JSON object"):
        load(ckpt)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "preprocessor_config.json", "tokenizer.json"])
def test_other_damaged_json_is_named(ckpt, name):
    (ckpt / name).write_bytes(b"{\x00")
    with raises(DamagedInputError, ckpt / name):
        load(ckpt)


# --- weights -------------------------------------------------------------------------------------------


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 1000])


def emptied(path):
    path.write_bytes(b"")


def scrambled(path):
    data = bytearray(path.read_bytes())
    data[8:48] = b"#" * 40
    path.write_bytes(bytes(data))


def header_too_long(path):
    data = bytearray(path.read_bytes())
    data[:8] = (10**9).to_bytes(8, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [cut_short, emptied, scrambled, header_too_long])
def test_damaged_safetensors_is_named(ckpt, damage):
    damage(ckpt / "model.safetensors")
    with raises(DamagedInputError, ckpt / "model.safetensors"):
        load(ckpt)


def test_tensors_that_do_not_fit_their_header_are_named(ckpt):
    """A whole-looking header whose tensor sizes are wrong: safetensors' error, translated."""
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + header_len].replace(b'"F32"', b'"F16"', 1)
    path.write_bytes(data[:8] + header + data[8 + header_len :])
    with raises(DamagedInputError, ckpt, "cannot be read"):
        load(ckpt)


def test_no_weights_file(ckpt):
    (ckpt / "model.safetensors").unlink()
    with raises(DamagedInputError, ckpt, "has no weights file", "model.safetensors"):
        load(ckpt)


@pytest.mark.parametrize("damage", [cut_short, emptied])
def test_damaged_pytorch_bin_weights_are_named(saved, ckpt, damage):
    """The older weights format: checked for being a torch archive at all."""
    (ckpt / "model.safetensors").unlink()
    torch.save(saved[0].state_dict(), ckpt / "pytorch_model.bin")
    damage(ckpt / "pytorch_model.bin")
    with raises(DamagedInputError, ckpt / "pytorch_model.bin", "not a readable torch checkpoint"):
        load(ckpt)


def test_sharded_checkpoint_loads(saved, sharded):
    assert len(shard_names(sharded)) > 1
    _, model, _, _ = load(sharded)
    state = saved[0].state_dict()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_missing_shard_is_named(sharded, tmp_path):
    folder = shutil.copytree(sharded, tmp_path / "ckpt")
    missing = shard_names(folder)[1]
    (folder / missing).unlink()
    with raises(DamagedInputError, "model.safetensors.index.json", missing, "missing"):
        load(folder)


def test_cut_shard_is_named(sharded, tmp_path):
    folder = shutil.copytree(sharded, tmp_path / "ckpt")
    shard = shard_names(folder)[-1]
    cut_short(folder / shard)
    with raises(DamagedInputError, folder / shard):
        load(folder)


def test_damaged_index_is_named(sharded, tmp_path):
    folder = shutil.copytree(sharded, tmp_path / "ckpt")
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with raises(DamagedInputError, folder / "model.safetensors.index.json", "weight_map"):
        load(folder)


# --- tokenizer ---------------------------------------------------------------------------------------------


def test_checkpoint_without_tokenizer(ckpt):
    (ckpt / "tokenizer.json").unlink()
    with raises(DamagedInputError, ckpt, "lacks a tokenizer", "tokenizer.json"):
        load(ckpt)


def test_model_base_without_tokenizer_says_it_is_read_from_there(stage1, ckpt):
    (ckpt / "tokenizer.json").unlink()
    with raises(DamagedInputError, f"model_base {ckpt}", "lacks a tokenizer", "read from there"):
        load(stage1, model_base=ckpt)


# --- stage-1 hand-off: mm_projector.bin + model_base ----------------------------------------------------


def test_stage1_folder_loads_on_its_base(stage1, saved):
    _, model, _, _ = load(stage1, model_base=saved[1])
    assert torch.equal(model.model.image_newline, saved[0].model.image_newline)


@pytest.mark.parametrize("content", [b"not a torch file\n", b"hello", b"PK\x03\x04 cut zip", b"", bytes(range(256))])
def test_projector_that_is_not_a_torch_file(stage1, saved, content):
    (stage1 / "mm_projector.bin").write_bytes(content)
    with raises(DamagedInputError, stage1 / "mm_projector.bin", "not a readable torch checkpoint"):
        load(stage1, model_base=saved[1])


def test_zip_that_is_not_a_torch_file(stage1, saved):
    """Passes the cheap look before loading; torch's own reader then fails, and the file is named."""
    with zipfile.ZipFile(stage1 / "mm_projector.bin", "w") as archive:
        archive.writestr("notes.txt", "not weights")
    with raises(DamagedInputError, stage1 / "mm_projector.bin", "not a readable torch checkpoint"):
        load(stage1, model_base=saved[1])


@pytest.mark.parametrize("damage", ["text", "cut", "empty", "pickle"])
def test_projector_loader_names_damaged_file(saved, stage1, damage):
    path = stage1 / "mm_projector.bin"
    if damage == "text":
        path.write_text("hello")
    elif damage == "cut":
        cut_short(path)
    elif damage == "empty":
        emptied(path)
    else:
        path.write_bytes(b"\x80\x02garbage")
    with raises(DamagedInputError, path, "not a readable torch checkpoint"):
        load_mm_projector_weights(saved[0], str(path))


def test_truncated_projector(stage1, saved):
    cut_short(stage1 / "mm_projector.bin")
    with raises(DamagedInputError, stage1 / "mm_projector.bin"):
        load(stage1, model_base=saved[1])


def test_projector_without_named_tensors(stage1, saved):
    torch.save([torch.zeros(2)], stage1 / "mm_projector.bin")
    with raises(DamagedInputError, stage1 / "mm_projector.bin", "named tensors"):
        load(stage1, model_base=saved[1])


def test_stage1_folder_without_model_base_asks_for_it(stage1):
    with raises(UsageError, stage1, "mm_projector.bin", "model_base"):
        load(stage1)


def test_model_base_with_a_full_checkpoint_says_to_drop_it(ckpt, saved):
    with raises(UsageError, ckpt / "mm_projector.bin", "without model_base"):
        load(ckpt, model_base=saved[1])


def test_model_base_without_weights(stage1, ckpt):
    (ckpt / "model.safetensors").unlink()
    with raises(DamagedInputError, f"model_base {ckpt}", "has no weights file"):
        load(stage1, model_base=ckpt)


def test_missing_projector_file_in_the_api(saved, tmp_path):
    with raises(UsageError, tmp_path / "mm_projector.bin", "does not exist"):
        load_mm_projector_weights(saved[0], str(tmp_path / "mm_projector.bin"))


# --- paths ---------------------------------------------------------------------------------------------------


def test_paths_that_are_not_there_or_not_checkpoints(ckpt, stage1, tmp_path):
    with raises(UsageError, tmp_path / "nowhere", "does not exist"):
        load(tmp_path / "nowhere")
    with raises(UsageError, tmp_path / "nowhere", "does not exist"):
        load(stage1, model_base=tmp_path / "nowhere")
    with raises(UsageError, ckpt / "config.json", "is a file"):
        load(ckpt / "config.json")
    (tmp_path / "empty").mkdir()
    with raises(UsageError, tmp_path / "empty", "no config.json"):
        load(tmp_path / "empty")
    (ckpt / "config.json").unlink()
    with raises(DamagedInputError, ckpt, "has weights but no config.json"):
        load(ckpt)


def test_options_and_mismatches_are_user_errors(ckpt):
    with pytest.raises(UsageError, match="torch_dtype 'float8'"):
        load_pretrained_model(str(ckpt), device="cpu", torch_dtype="float8")
    with pytest.raises(UsageError, match="attn_implementation 'fast'"):
        load_pretrained_model(str(ckpt), device="cpu", attn_implementation="fast")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "llava_mystery"}))
    with pytest.raises(UsageError, match="llava_mystery"):
        load(ckpt)
    (ckpt / "config.json").write_text(json.dumps({**config, "intermediate_size": 999}))
    with pytest.raises(DamagedInputError, match="of another shape than its config.json builds"):
        load(ckpt)


def test_user_errors_stay_value_errors():
    assert issubclass(UserError, ValueError)
