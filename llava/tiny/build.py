"""Build every tiny offline asset in one go: dataset, tokenizer, tiny Vicuna, tiny CLIP, and
ready-to-run tiny LLaVA checkpoints (baseline and ProxyV), all with `save_pretrained`. With
`family` (e.g. "qwen2"), also the same tiny LLM in that decoder family (`tiny-qwen2`), with the
same tokenizer and the same text pretraining, for the launch scripts' `TINY_FAMILY`.

`python -m llava.tiny` runs it (default folder `playground/tiny`). Existing, complete assets are
kept, so calling it again is cheap.

Each asset folder gets a completion marker, `.complete.json`, written last: the files the build
wrote with their sizes (and the SHA-256 of the small ones), the settings it was built with (seed,
text-pretraining steps) and which build of each folder it was made from. Every call checks each
folder against its marker (sizes, safetensors headers, small-file hashes, and for the data that the
JSON files parse and the images they name exist) and rebuilds, with a log line naming the file, a
folder that is incomplete, damaged, built with other settings or from a dependency that was rebuilt
since. A folder without a marker (an interrupted build, or one from an earlier version) is rebuilt.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from llava.errors import DamagedInputError, one_line, read_json_file, read_safetensors_header
from llava.model.assemble import build_llava_from_llm

from .dataset import CURRICULUM_FILENAME, SCENES_FILENAME, generate_tiny_dataset, iter_dataset_texts
from .eval_split import PER_CATEGORY, QUESTIONS_FILENAME, generate_eval_split
from .models import TINY_PROXYV_REDUCE_FACTOR, build_tiny_clip, build_tiny_llm, tiny_clip_image_processor
from .pretrain_clip import pretrain_tiny_clip
from .pretrain_llm import pretrain_tiny_llm
from .tokenizer import tiny_tokenizer_corpus, train_tiny_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_TINY_DIR = Path("playground") / "tiny"
TINY_PROXYV_START_LAYER = 2
DEFAULT_LLM_TEXT_STEPS = 600
DEFAULT_CLIP_PRETRAIN_STEPS = 300
DEFAULT_NUM_SCENES = 2000
# Bumped when what a folder holds changes for the same settings, so folders of an earlier recipe are rebuilt.
DATA_RECIPE = 4  # 2: square scenes, one all-questions conversation per picture, tiny_scenes.json; 3: + tiny_curriculum.json;
# 4: its lookup phase also asks whether there is text
CLIP_RECIPE = 2  # 2: 56 px patches, 64 wide, sinusoidal positions, pretrained on the training pictures

MARKER_NAME = ".complete.json"
MARKER_FORMAT = 1
HASHED_SIZE_LIMIT = 1 << 20  # files up to 1 MiB (and every JSON file) are hashed; weights are checked by size and header


@dataclass(frozen=True)
class TinyAssets:
    """Where the tiny assets live under one root folder."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def captions(self) -> Path:
        return self.data / "tiny_captions.json"

    @property
    def instruct(self) -> Path:
        return self.data / "tiny_instruct.json"

    @property
    def curriculum(self) -> Path:
        return self.data / CURRICULUM_FILENAME

    @property
    def scenes(self) -> Path:
        return self.data / SCENES_FILENAME

    @property
    def llm(self) -> Path:
        return self.root / "tiny-vicuna"

    def family_llm(self, family: str) -> Path:
        """The tiny LLM of a decoder family: `tiny-vicuna` for Llama, `tiny-<family>` otherwise."""
        return self.llm if family == "llama" else self.root / f"tiny-{family}"

    @property
    def clip(self) -> Path:
        return self.root / "tiny-clip-vit-336"

    @property
    def eval(self) -> Path:
        """The held-out evaluation split (`llava.tiny.eval_split`): new scenes, questions by category."""
        return self.root / "eval"

    @property
    def eval_questions(self) -> Path:
        return self.eval / QUESTIONS_FILENAME

    @property
    def llava(self) -> Path:
        return self.root / "tiny-llava"

    @property
    def llava_proxyv(self) -> Path:
        return self.root / "tiny-llava-proxyv"

    def example_image(self) -> Path:
        return sorted((self.data / "images").glob("*.png"))[0]


# --- completion markers ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_listing(folder: Path) -> dict[str, dict]:
    """Every file under `folder` but the marker: its size, and the SHA-256 of JSON and other small files."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith(MARKER_NAME):
            continue
        entry = {"size": path.stat().st_size}
        if path.suffix == ".json" or (path.suffix != ".safetensors" and entry["size"] <= HASHED_SIZE_LIMIT):
            entry["sha256"] = _sha256(path)
        files[path.relative_to(folder).as_posix()] = entry
    return files


def write_completion_marker(folder: Path, settings: dict, depends_on: dict[str, str] | None = None,
                            info: dict | None = None, content_id: bool = False) -> str:
    """Write `folder`'s marker (atomically, after everything else) and return its build id.

    The build id is what dependents record in `depends_on`. With `content_id` it is a hash of the
    folder's JSON files (the data: a rebuild with the same seed writes the same records, so the models
    trained on its text stay valid); otherwise a fresh id per build.
    """
    files = _file_listing(folder)
    if content_id:
        json_hashes = {name: entry["sha256"] for name, entry in files.items() if name.endswith(".json")}
        build_id = hashlib.sha256(json.dumps(json_hashes, sort_keys=True).encode()).hexdigest()[:32]
    else:
        build_id = uuid.uuid4().hex
    marker = {"format": MARKER_FORMAT, "asset": folder.name, "build_id": build_id, "settings": settings,
              "depends_on": depends_on or {}, "info": info or {}, "files": files}
    partial = folder / f"{MARKER_NAME}.partial"
    partial.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, folder / MARKER_NAME)
    return build_id


def _short_reason(error: Exception, path: Path) -> str:
    """The reader's message without the path (the log line names it) and without its "restore it" advice."""
    text = one_line(error).replace(f" {path}", "")
    return re.split(r"[;:] restore", text)[0].rstrip(".")


def _file_problem(folder: Path, relative: str, expected: dict) -> str | None:
    """Why the file `relative` under `folder` differs from what the build wrote, or None."""
    path, label = folder / relative, f"{folder.name}/{relative}"
    if not path.is_file():
        return f"{label} is missing"
    try:
        if path.suffix == ".safetensors":
            read_safetensors_header(path)
        elif path.suffix == ".json":
            read_json_file(path)
        size = path.stat().st_size
        if size != expected.get("size"):
            return f"{label} has {size} bytes, not the {expected.get('size')} it was built with"
        if "sha256" in expected and _sha256(path) != expected["sha256"]:
            return f"{label} has changed since it was built"
    except DamagedInputError as error:
        return f"{label} is damaged ({_short_reason(error, path)})"
    except OSError as error:
        return f"{label} cannot be read ({one_line(error)})"
    return None


def read_completion_marker(folder: Path) -> tuple[dict | None, str | None]:
    """(marker, None) when every file the marker lists is as the build wrote it, else (None, why not)."""
    path = folder / MARKER_NAME
    if not path.is_file():
        return None, (f"{folder.name} has no completion marker ({MARKER_NAME}): its build was interrupted or an "
                      "earlier version built it")
    try:
        marker = read_json_file(path, "completion marker")
    except DamagedInputError as error:
        return None, f"{folder.name}/{MARKER_NAME} is damaged ({_short_reason(error, path)})"
    if (not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT
            or not isinstance(marker.get("files"), dict) or not marker.get("build_id")):
        return None, f"{folder.name}/{MARKER_NAME} is not a completion marker this version wrote"
    for relative, expected in marker["files"].items():
        problem = _file_problem(folder, relative, expected if isinstance(expected, dict) else {})
        if problem:
            return None, problem
    return marker, None


def _settings_problem(folder: Path, marker: dict, settings: dict, depends_on: dict[str, str]) -> str | None:
    built = marker.get("settings") or {}
    for key, value in settings.items():
        if built.get(key, "unrecorded") != value:
            if key == "llm_text_steps":
                return (f"{folder.name} was pretrained on text for {built.get(key)} steps, not the {value} "
                        "asked for")
            return f"{folder.name} was built with {key} {built.get(key)}, not the {value} asked for"
    recorded = marker.get("depends_on") or {}
    for name, build_id in depends_on.items():
        if recorded.get(name) != build_id:
            return f"{folder.name} was built from another {name} (rebuilt since)"
    return None


def _data_problem(assets: TinyAssets) -> str | None:
    """The annotation files hold records whose images all exist."""
    for json_path in (assets.captions, assets.instruct, assets.curriculum, assets.scenes):
        label = f"{assets.data.name}/{json_path.name}"
        if not json_path.is_file():
            return f"{label} is missing"
        try:
            records = read_json_file(json_path)
        except DamagedInputError as error:
            return f"{label} is damaged ({_short_reason(error, json_path)})"
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return f"{label} is damaged (not a list of records)"
        for record in records:
            images = record.get("image") or []
            for image in [images] if isinstance(images, str) else images:
                if not (assets.data / image).is_file():
                    return f"{assets.data.name}/{image} is missing (record {record.get('id')} of {label} names it)"
    return None


def _ensure(folder: Path, build: Callable[[], dict | None], settings: dict, depends_on: dict[str, str] | None = None,
            extra_check: Callable[[], str | None] | None = None, content_id: bool = False,
            remove_on_rebuild: bool = True) -> str:
    """Keep `folder` when its marker vouches for it (same settings, same dependency builds), else
    (re)build it with `build` (which may return facts for the marker's `info`); returns its build id."""
    depends_on = depends_on or {}
    if folder.exists():
        marker, problem = read_completion_marker(folder)
        if problem is None:
            problem = _settings_problem(folder, marker, settings, depends_on)
        if problem is None and extra_check is not None:
            problem = extra_check()
        if problem is None:
            return marker["build_id"]
        logger.warning("%s; rebuilding %s", problem, folder.name)
        if not folder.is_dir():
            folder.unlink()
        elif remove_on_rebuild:  # nothing of the old build (stale shards, a half-written file) survives
            shutil.rmtree(folder)
        else:
            (folder / MARKER_NAME).unlink(missing_ok=True)
    info = build()
    return write_completion_marker(folder, settings, depends_on, info, content_id=content_id)


# --- the builds ----------------------------------------------------------------------------------------


def _save_llava(assets: TinyAssets, out_dir: Path, proxyv_start_layer: int | None, seed: int) -> None:
    proxyv_options = {} if proxyv_start_layer is None else {"proxyv_reduce_factor": TINY_PROXYV_REDUCE_FACTOR}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the fresh projector / ProxyV modules are the same on every build
        model = build_llava_from_llm(str(assets.llm), str(assets.clip), proxyv_start_layer=proxyv_start_layer,
                                     tokenizer_model_max_length=4096, **proxyv_options)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(assets.llm).save_pretrained(out_dir)
    tiny_clip_image_processor().save_pretrained(out_dir)


def _text_pretraining(llm_dir: Path, llm_text_steps: int, seed: int) -> dict:
    """Pretrain the LLM in `llm_dir` on text when asked; what the marker records about it."""
    if llm_text_steps <= 0:
        return {"text_pretrained": False, "text_steps": 0}
    losses = pretrain_tiny_llm(llm_dir, llm_text_steps, seed=seed)
    tail = losses[-50:]
    return {"text_pretrained": True, "text_steps": len(losses), "text_loss_first": losses[0],
            "text_loss_last50": sum(tail) / len(tail)}


def _clip_pretraining(clip_dir: Path, data_dir: Path, clip_pretrain_steps: int, seed: int) -> dict:
    """Pretrain the tower in `clip_dir` on the training pictures when asked; what the marker records."""
    if clip_pretrain_steps <= 0:
        return {"pretrained": False, "pretrain_steps": 0}
    losses = pretrain_tiny_clip(clip_dir, data_dir, clip_pretrain_steps, seed=seed)
    tail = losses[-50:]
    return {"pretrained": True, "pretrain_steps": len(losses), "pretrain_loss_first": losses[0],
            "pretrain_loss_last50": sum(tail) / len(tail)}


def build_tiny_assets(root: str | Path = DEFAULT_TINY_DIR, seed: int = 0,
                      llm_text_steps: int = DEFAULT_LLM_TEXT_STEPS, family: str = "llama",
                      clip_pretrain_steps: int = DEFAULT_CLIP_PRETRAIN_STEPS,
                      num_scenes: int = DEFAULT_NUM_SCENES) -> TinyAssets:
    """Build whatever is missing, damaged or out of date under `root` and return where everything is.

    `llm_text_steps` > 0 pretrains a newly built tiny LLM on text for that many steps (see
    `llava.tiny.pretrain_llm`, about 1 min for the default), so that the launch scripts' short
    training ends in a model that answers in kind; 0 keeps it random (the tests do: it builds in
    seconds and they need no language skill). An LLM pretrained for another number of steps than
    asked for is rebuilt, and so is everything built from it. `clip_pretrain_steps` > 0 likewise
    pretrains the tiny CLIP on the training pictures (`llava.tiny.pretrain_clip`, about a minute);
    `num_scenes` is the number of training pictures (the tests use fewer than the default).
    """
    assets = TinyAssets(Path(root))
    llm_settings = {"seed": seed, "llm_text_steps": llm_text_steps}

    def build_data():
        generate_tiny_dataset(assets.data, num_scenes=num_scenes, seed=seed)

    def build_llm():
        logger.info("Training the tiny tokenizer and building the tiny Vicuna-like LLM in %s", assets.llm)
        corpus = tiny_tokenizer_corpus(iter_dataset_texts([assets.captions, assets.instruct]))
        build_tiny_llm(assets.llm, train_tiny_tokenizer(corpus), seed=seed)
        return {"family": "llama", **_text_pretraining(assets.llm, llm_text_steps, seed)}

    def build_family_llm():
        folder = assets.family_llm(family)
        logger.info("Building the tiny %s LLM (same shape and tokenizer) in %s", family, folder)
        build_tiny_llm(folder, AutoTokenizer.from_pretrained(assets.llm), seed=seed, family=family)
        return {"family": family, **_text_pretraining(folder, llm_text_steps, seed)}

    def build_clip():
        build_tiny_clip(assets.clip, seed=seed)
        return _clip_pretraining(assets.clip, assets.data, clip_pretrain_steps, seed)

    def build_eval():
        return generate_eval_split(assets.eval, assets.data / "images", PER_CATEGORY, seed=seed)

    data_id = _ensure(assets.data, build_data, {"seed": seed, "num_scenes": num_scenes, "recipe": DATA_RECIPE}, extra_check=lambda: _data_problem(assets),
                      content_id=True, remove_on_rebuild=False)  # the data folder may hold the user's own files
    _ensure(assets.eval, build_eval, {"seed": seed, "per_category": PER_CATEGORY}, {"data": data_id},
            extra_check=lambda: None if assets.eval_questions.is_file() else f"{assets.eval_questions} is missing")
    llm_id = _ensure(assets.llm, build_llm, llm_settings, {"data": data_id})
    if family != "llama":
        _ensure(assets.family_llm(family), build_family_llm, {**llm_settings, "family": family},
                {assets.llm.name: llm_id})
    clip_id = _ensure(assets.clip, build_clip, {"seed": seed, "clip_pretrain_steps": clip_pretrain_steps,
                                                "recipe": CLIP_RECIPE},
                      {"data": data_id} if clip_pretrain_steps > 0 else {})
    parents = {assets.llm.name: llm_id, assets.clip.name: clip_id}
    _ensure(assets.llava, lambda: _save_llava(assets, assets.llava, None, seed),
            {"seed": seed, "proxyv_start_layer": None}, parents)
    _ensure(assets.llava_proxyv, lambda: _save_llava(assets, assets.llava_proxyv, TINY_PROXYV_START_LAYER, seed),
            {"seed": seed, "proxyv_start_layer": TINY_PROXYV_START_LAYER,
             "proxyv_reduce_factor": TINY_PROXYV_REDUCE_FACTOR}, parents)
    logger.info("Tiny assets are ready in %s", assets.root)
    return assets

