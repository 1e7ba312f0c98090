"""Golden outputs of LLaVA-NeXT's own code for tiny checkpoints in the official LLaVA-1.5 and
LLaVA-1.6 formats (Vicuna and Mistral; `pad`, `spatial_unpad` and `spatial`).

`tests/data/golden_llava_next/` holds the checkpoints and what LLaVA-VL/LLaVA-NeXT (df17966,
transformers 4.41.2, fp32, eager) computed for them: loss, last-token logits, every 61st row's
logits and 6 greedy tokens, for five images of different aspect ratios (two of which AnyRes pads,
so `spatial_unpad` cuts rows or columns). `make_llava_next_golden.py` there says how they were made.
Our builder must load each as the plain baseline of its family with exactly the file's tensors,
build the layout its config names (read by `merge_type_of_saved_config`), and reproduce those
numbers to 1e-4 with pixels from our own `process_images`.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from llava.errors import UsageError
from llava.model.builder import load_pretrained_model
from llava.model.image_merge import image_token_counts
from tests.golden_helpers import assert_all_weights_from_file, case_id, copy_golden_checkpoints, golden_loader
from tests.paths import GOLDEN

FOLDER = Path(__file__).resolve().parents[1] / "data" / "golden_llava_next"
CLIP = GOLDEN / "clip"
DOCUMENT = json.loads((FOLDER / "cases.json").read_text())
CASES = DOCUMENT["cases"]
CHECKPOINTS = sorted({case["checkpoint"] for case in CASES})
ATOL = 1e-4
LAYOUTS = {"llava15_vicuna": ("flat", "pad", False), "llava16_vicuna": ("spatial_unpad", "anyres", True),
           "llava16_vicuna_spatial": ("spatial", "anyres", False), "llava16_mistral": ("spatial_unpad", "anyres", True)}

pytestmark = pytest.mark.skipif(not CLIP.is_dir(), reason="the shared golden tiny CLIP folder is not present")


@pytest.fixture(scope="module")
def golden_dirs(tmp_path_factory):
    return copy_golden_checkpoints(CHECKPOINTS, FOLDER, CLIP, tmp_path_factory.mktemp("golden_llava_next"))


@pytest.fixture(scope="module")
def loaded(golden_dirs):
    """`loaded(name, impl)` -> (model, processor), each loaded once per module through our builder."""
    load = golden_loader(golden_dirs)
    yield load
    load.cache_clear()


def _inputs(case, model, processor):
    from PIL import Image

    from llava.serve.inference import pixels_for_model

    image = Image.open(FOLDER / case["image"]).convert("RGB")
    return pixels_for_model([image], processor, model), [tuple(case["image_size"])]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_loads_as_the_family_baseline_with_its_layout(name, loaded, golden_dirs):
    model, _ = loaded(name, "eager")
    merge_type, aspect, has_newline = LAYOUTS[name]
    assert (model.config.mm_patch_merge_type, model.config.image_aspect_ratio) == (merge_type, aspect)
    assert hasattr(model.model, "image_newline") == has_newline
    assert type(model).__name__ == ("LlavaMistralForCausalLM" if "mistral" in name else "LlavaLlamaForCausalLM")
    assert_all_weights_from_file(model, FOLDER / name)
    model.config.save_pretrained(golden_dirs[name] / "resaved")  # our save keeps the layout it read
    assert AutoConfig.from_pretrained(golden_dirs[name] / "resaved").mm_patch_merge_type == merge_type


# Every case under sdpa; eager (the attention LLaVA-NeXT ran) on the cases whose images AnyRes pads.
RUNS = [(case, "sdpa") for case in CASES] + [(case, "eager") for case in CASES if case["image"].endswith(("img3.png", "img4.png"))]


@pytest.mark.parametrize(("case", "impl"), RUNS, ids=[f"{case_id(case)}-{impl}" for case, impl in RUNS])
def test_golden_llava_next_outputs(case, impl, loaded):
    model, processor = loaded(case["checkpoint"], impl)
    pixels, sizes = _inputs(case, model, processor)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([case["input_ids"]]), labels=torch.tensor([case["labels"]]),
                    images=pixels, image_sizes=sizes, use_cache=False)
    assert out.logits.shape[1] == case["seq_len"]
    tower = model.get_vision_tower()
    counts = image_token_counts(model.config, case["num_crops"], tower.num_patches, sizes[0], tower.config.image_size)
    assert sum(counts) + len(case["input_ids"]) - 1 == case["seq_len"]
    torch.testing.assert_close(out.loss, torch.tensor(case["loss"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[0, -1], torch.tensor(case["last_logits"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[0, case["rows"]], torch.tensor(case["row_logits"]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_llava_next_greedy_generation(case, loaded):
    model, processor = loaded(case["checkpoint"], "sdpa")
    pixels, sizes = _inputs(case, model, processor)
    prompt = torch.tensor([case["prompt_ids"]])
    with torch.no_grad():
        generated = model.generate(prompt, images=pixels, image_sizes=sizes, attention_mask=torch.ones_like(prompt),
                                   do_sample=False, num_beams=1, max_new_tokens=len(case["generated_ids"]),
                                   pad_token_id=3, use_cache=True)
    assert generated[0].tolist()[: len(case["generated_ids"])] == case["generated_ids"]


def test_llava_15_model_type_llava_loads_as_llava_llama(golden_dirs, loaded):
    """liuhaotian/llava-v1.5-* configs say model_type "llava" (haotian-liu/LLaVA's name before
    "llava_llama"); Hugging Face's llava-hf format, which also says "llava", is refused by name."""
    folder = golden_dirs["llava15_vicuna"].parent / "llava15_model_type_llava"
    shutil.copytree(golden_dirs["llava15_vicuna"], folder)
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "model_type": "llava"}))
    _, model, processor, _ = load_pretrained_model(str(folder), None, None, device="cpu", attn_implementation="eager")
    assert type(model).__name__ == "LlavaLlamaForCausalLM" and model.config.mm_patch_merge_type == "flat"
    case = next(case for case in CASES if case["checkpoint"] == "llava15_vicuna")
    pixels, sizes = _inputs(case, model, processor)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([case["input_ids"]]), images=pixels, image_sizes=sizes, use_cache=False)
    torch.testing.assert_close(out.logits[0, -1], torch.tensor(case["last_logits"]), atol=ATOL, rtol=0)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"model_type": "llama"}}))
    with pytest.raises(UsageError, match="Hugging Face's LLaVA format"):
        load_pretrained_model(str(folder), None, None, device="cpu")


def test_customized_config_path_of_llava_15_and_benchmark_rows_of_an_official_config(golden_dirs):
    """A LLaVA-1.5 config given as lmms-eval's customized_config path is read as llava_llama; the
    prefill benchmark builds its rows from an official LLaVA-1.6 config on ProxyV's layout."""
    from llava.eval.prefill_benchmark import build_variants
    from llava.eval.presets import load_model_spec
    from llava.model.builder import read_customized_config

    config_file = golden_dirs["llava15_vicuna"].parent / "llava15_config.json"
    values = json.loads((golden_dirs["llava15_vicuna"] / "config.json").read_text())
    config_file.write_text(json.dumps({**values, "model_type": "llava"}))
    config = read_customized_config(str(config_file))
    assert (config.model_type, config.mm_patch_merge_type) == ("llava_llama", "flat")
    spec = load_model_spec(str(golden_dirs["llava16_vicuna"] / "config.json"))
    variants = build_variants(spec, [1])
    assert [v.name for v in variants] == ["baseline", "proxyv"]
    assert {v.config.mm_patch_merge_type for v in variants} == {"flat_newline"}


@pytest.mark.parametrize(("change", "message"), [
    ({"image_aspect_ratio": "anyres_max_9"}, "image_aspect_ratio 'anyres_max_9'"),
    ({"mm_patch_merge_type": "spatial_unpad_maxpool2x2"}, "Unknown mm_patch_merge_type 'spatial_unpad_maxpool2x2'"),
    ({"mm_vision_tower": "SIGLIP"}, "is a 'siglip_vision_model' vision tower"),
])
def test_a_checkpoint_we_cannot_run_is_one_error_line(change, message, golden_dirs, tmp_path, capsys):
    """LLaVA-OneVision-style settings in a checkpoint: `run_llava` exits 1 with one line naming the
    checkpoint and the key, not a traceback from inside the config class."""
    from llava.errors import run_main
    from llava.eval.run_llava import main

    folder = tmp_path / "checkpoint"
    shutil.copytree(golden_dirs["llava16_vicuna"], folder)
    siglip = tmp_path / "siglip"
    siglip.mkdir()
    (siglip / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    values = json.loads((folder / "config.json").read_text())
    values.update({key: str(siglip) if value == "SIGLIP" else value for key, value in change.items()})
    (folder / "config.json").write_text(json.dumps(values))
    image = FOLDER / "images" / "img0.png"
    assert run_main(main, ["--model-path", str(folder), "--image-file", str(image), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {folder}: ") and message in err[0]
