"""`build_tiny_assets` trusts a folder only when its completion marker vouches for every file.

The assets are built once per module (`llm_text_steps=0`, a few seconds); each test damages a copy,
one file at a time, and checks that the next call names the file in its log, rebuilds that folder and
the folders built from it, and leaves everything else alone.
"""

import json
import logging
import shutil

import pytest
from safetensors.torch import load_file

import llava.tiny.build as tiny_build
from llava.tiny.build import MARKER_NAME, TinyAssets, _data_problem, build_tiny_assets, read_completion_marker

DATA, VICUNA, CLIP, LLAVA, PROXYV = "data", "tiny-vicuna", "tiny-clip-vit-336", "tiny-llava", "tiny-llava-proxyv"
FOLDERS = (DATA, VICUNA, CLIP, LLAVA, PROXYV)
IMAGE = "images/scene_00003.png"
FAST = {"llm_text_steps": 0, "clip_pretrain_steps": 0, "num_scenes": 200}  # seconds to build


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_tiny_assets(tmp_path_factory.mktemp("tiny-pristine"), **FAST)


@pytest.fixture
def assets(pristine, tmp_path):
    """A copy of the pristine assets (file times kept) that the test may damage."""
    root = shutil.copytree(pristine.root, tmp_path / "tiny")
    return TinyAssets(root)


def marker_times(root, folders=FOLDERS) -> dict[str, int | None]:
    markers = {name: root / name / MARKER_NAME for name in folders}
    return {name: path.stat().st_mtime_ns if path.is_file() else None for name, path in markers.items()}


def file_times(root) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in sorted(root.rglob("*")) if path.is_file()}


def rebuild(assets, caplog, **kwargs) -> tuple[set[str], list[str]]:
    """Call the builder again: (the folders it rebuilt, its warning lines)."""
    before = marker_times(assets.root)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llava.tiny.build"):
        build_tiny_assets(assets.root, **{**FAST, **kwargs})
    warnings = [r.getMessage() for r in caplog.records if r.name == "llava.tiny.build" and r.levelno >= logging.WARNING]
    after = marker_times(assets.root)
    return {name for name in FOLDERS if after[name] != before[name]}, warnings


def assert_all_intact(assets):
    for name in FOLDERS:
        marker, problem = read_completion_marker(assets.root / name)
        assert problem is None and marker is not None, problem
    assert _data_problem(assets) is None


def test_build_writes_a_marker_per_folder_listing_its_files(pristine):
    for name in FOLDERS:
        marker = json.loads((pristine.root / name / MARKER_NAME).read_text())
        files = {str(p.relative_to(pristine.root / name)) for p in (pristine.root / name).rglob("*")
                 if p.is_file() and p.name != MARKER_NAME}
        assert set(marker["files"]) == files
        assert marker["settings"]["seed"] == 0
    vicuna = json.loads((pristine.llm / MARKER_NAME).read_text())
    assert vicuna["settings"]["llm_text_steps"] == 0
    assert vicuna["info"]["text_pretrained"] is False and vicuna["info"]["text_steps"] == 0
    assert vicuna["files"]["model.safetensors"]["size"] == (pristine.llm / "model.safetensors").stat().st_size
    assert "sha256" in vicuna["files"]["config.json"] and "sha256" not in vicuna["files"]["model.safetensors"]
    llava = json.loads((pristine.llava / MARKER_NAME).read_text())
    assert llava["depends_on"] == {VICUNA: vicuna["build_id"],
                                   CLIP: json.loads((pristine.clip / MARKER_NAME).read_text())["build_id"]}


def test_intact_assets_are_not_rebuilt(assets, caplog):
    before = file_times(assets.root)
    rebuilt, warnings = rebuild(assets, caplog)
    assert rebuilt == set() and warnings == []
    assert file_times(assets.root) == before


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b"")


def scramble_header(path):
    """Same size, but the JSON header is garbage."""
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))


def break_json(path):
    path.write_text(path.read_text()[:-20])


def edit_json_same_size(path):
    text = path.read_text()
    config = json.loads(text)
    key = "vocab_size" if "vocab_size" in config else next(iter(config))
    path.write_text(text.replace(f'"{key}"', f'"{key[:-1]}X"', 1))


DAMAGE = {
    # (folder, file, damage): (message, folders rebuilt)
    "truncated LLM weights": (VICUNA, "model.safetensors", truncate, "tiny-vicuna/model.safetensors is damaged",
                              {VICUNA, LLAVA, PROXYV}),
    "deleted LLM weights": (VICUNA, "model.safetensors", lambda p: p.unlink(), "tiny-vicuna/model.safetensors is missing",
                            {VICUNA, LLAVA, PROXYV}),
    "emptied CLIP weights": (CLIP, "model.safetensors", empty, "tiny-clip-vit-336/model.safetensors is damaged",
                             {CLIP, LLAVA, PROXYV}),
    "scrambled header": (PROXYV, "model.safetensors", scramble_header, "tiny-llava-proxyv/model.safetensors is damaged",
                         {PROXYV}),
    "broken config.json": (LLAVA, "config.json", break_json, "tiny-llava/config.json is damaged (JSON file is not valid",
                           {LLAVA}),
    "edited config.json": (VICUNA, "config.json", edit_json_same_size,
                           "tiny-vicuna/config.json has changed since it was built", {VICUNA, LLAVA, PROXYV}),
    "deleted tokenizer": (LLAVA, "tokenizer.json", lambda p: p.unlink(), "tiny-llava/tokenizer.json is missing", {LLAVA}),
    "deleted image": (DATA, IMAGE, lambda p: p.unlink(), f"data/{IMAGE} is missing", {DATA}),
    "removed marker": (PROXYV, MARKER_NAME, lambda p: p.unlink(), "tiny-llava-proxyv has no completion marker",
                       {PROXYV}),
    "damaged marker": (CLIP, MARKER_NAME, break_json, f"tiny-clip-vit-336/{MARKER_NAME} is damaged",
                       {CLIP, LLAVA, PROXYV}),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_file_is_named_and_its_folder_rebuilt(assets, caplog, case):
    folder, relative, damage, message, expected = DAMAGE[case]
    untouched = {name: file_times(assets.root / name) for name in FOLDERS if name not in expected}
    damage(assets.root / folder / relative)

    rebuilt, warnings = rebuild(assets, caplog)
    assert rebuilt == expected
    assert any(line.startswith(message) and line.endswith(f"; rebuilding {folder}") for line in warnings), warnings
    for name in expected - {folder}:  # built from a rebuilt folder
        assert any(line.endswith(f"; rebuilding {name}") and "was built from another" in line for line in warnings)
    assert {name: file_times(assets.root / name) for name in untouched} == untouched
    assert_all_intact(assets)
    if relative.endswith(".safetensors"):
        assert load_file(assets.root / folder / relative)
    assert rebuild(assets, caplog) == (set(), [])  # and now it is trusted again


def test_assets_without_markers_are_rebuilt_once(assets, caplog):
    """Folders an earlier version built (no markers) are rebuilt on the first call only."""
    for name in FOLDERS:
        (assets.root / name / MARKER_NAME).unlink()
    rebuilt, warnings = rebuild(assets, caplog)
    assert rebuilt == set(FOLDERS)
    assert {line.split(" ")[0] for line in warnings} == set(FOLDERS)
    assert_all_intact(assets)
    assert rebuild(assets, caplog) == (set(), [])


def test_other_text_steps_rebuild_the_llm_and_record_them(assets, caplog, monkeypatch):
    calls = []

    def fake_pretraining(llm_dir, steps, seed=0):
        calls.append((llm_dir, steps))
        return [2.0, 1.0]

    monkeypatch.setattr(tiny_build, "pretrain_tiny_llm", fake_pretraining)
    rebuilt, warnings = rebuild(assets, caplog, llm_text_steps=2)
    assert rebuilt == {VICUNA, LLAVA, PROXYV}
    assert "tiny-vicuna was pretrained on text for 0 steps, not the 2 asked for; rebuilding tiny-vicuna" in warnings
    assert calls == [(assets.llm, 2)]
    marker = json.loads((assets.llm / MARKER_NAME).read_text())
    assert marker["settings"]["llm_text_steps"] == 2
    assert marker["info"]["text_pretrained"] is True and marker["info"]["text_steps"] == 2
    assert rebuild(assets, caplog, llm_text_steps=2) == (set(), [])


def test_clip_pretrained_for_other_steps_is_rebuilt_from_the_training_pictures(assets, caplog):
    rebuilt, warnings = rebuild(assets, caplog, clip_pretrain_steps=2)
    assert rebuilt == {CLIP, LLAVA, PROXYV}
    assert f"{CLIP} was built with clip_pretrain_steps 0, not the 2 asked for; rebuilding {CLIP}" in warnings
    marker = json.loads((assets.clip / MARKER_NAME).read_text())
    assert marker["info"]["pretrained"] is True and marker["info"]["pretrain_steps"] == 2
    assert marker["depends_on"] == {DATA: json.loads((assets.data / MARKER_NAME).read_text())["build_id"]}
    assert rebuild(assets, caplog, clip_pretrain_steps=2) == (set(), [])


def test_family_llm_is_rebuilt_with_the_llm_it_copies(assets, caplog):
    build_tiny_assets(assets.root, **FAST, family="qwen2")
    qwen2 = assets.family_llm("qwen2")
    marker, problem = read_completion_marker(qwen2)
    assert problem is None and marker["settings"]["family"] == "qwen2"
    truncate(assets.llm / "model.safetensors")
    before = (qwen2 / MARKER_NAME).stat().st_mtime_ns
    rebuilt, warnings = rebuild(assets, caplog, family="qwen2")
    assert rebuilt == {VICUNA, LLAVA, PROXYV}
    assert "tiny-qwen2 was built from another tiny-vicuna (rebuilt since); rebuilding tiny-qwen2" in warnings
    assert (qwen2 / MARKER_NAME).stat().st_mtime_ns != before
    assert read_completion_marker(qwen2)[1] is None


def test_data_records_must_name_existing_images(assets):
    records = json.loads(assets.instruct.read_text())
    record = next(r for r in records if isinstance(r.get("image"), list))
    record["image"][1] = "images/not_there.png"
    assets.instruct.write_text(json.dumps(records))
    assert _data_problem(assets) == (f"data/images/not_there.png is missing (record {record['id']} of "
                                     "data/tiny_instruct.json names it)")
    assets.captions.write_text('{"not": "a list"}')
    assert _data_problem(assets) == "data/tiny_captions.json is damaged (not a list of records)"
