"""Build golden outputs of LLaVA-NeXT's own code for tiny checkpoints in the official LLaVA-1.5 and
LLaVA-1.6 formats (the layouts `llava.model.image_merge` implements).

What it does
------------
1. Builds tiny random-init checkpoints in LLaVA-NeXT's format (fixed seeds), the CLIP tower's weights
   included and equal to the shared tiny CLIP's:
   - `llava15_vicuna`: `llava_llama`, `image_aspect_ratio` "pad", no `mm_patch_merge_type` key (as
     llava-v1.5-7b's config.json), no `image_newline`;
   - `llava16_vicuna`: `llava_llama`, "anyres" with LLaVA-1.6's grid pinpoints, "spatial_unpad";
   - `llava16_vicuna_spatial`: the same with "spatial" (no unpadding, no newline);
   - `llava16_mistral`: `llava_mistral`, "anyres", "spatial_unpad".
   `config.json` names the tower with the placeholder `"CLIP_DIR"`.
2. Uses five images of different aspect ratios: `img0.png` 700x350 and `img1.png` 300x900 (the
   shared golden's), `img2.png` 1000x1000 (drawn; 5 AnyRes crops), and `img3.png` 640x480 and
   `img4.png` 480x640 (drawn), which AnyRes pads to 672x672, so `spatial_unpad` cuts rows / columns.
3. Loads each checkpoint back with LLaVA-NeXT's `from_pretrained` (fp32, eager attention), asserts
   no missing / unexpected keys, and for every checkpoint x image runs their multimodal step and
   forward (batch of one, `use_cache=False`, pixels from their `process_images`, `image_sizes`) and
   their `generate` (greedy, 6 new tokens, KV cache) on the prompt without the answer.
4. Writes `cases.json`: per case the ids, labels, image size, crop count, expanded length, loss,
   last-token logits, the logits of every 61st row (and the last), and the generated ids.

How to run
----------
In the authors' environment (a virtualenv with torch 2.13.0 CPU, transformers 4.41.2, safetensors,
pillow 13, einops, requests), with LLaVA-NeXT's repository (LLaVA-VL/LLaVA-NeXT, commit df17966,
unmodified) first on PYTHONPATH, from a directory outside our repository:

    rm -rf /tmp/llava_next_src && mkdir /tmp/llava_next_src
    git -C /work/.mirror/LLaVA-VL+LLaVA-NeXT/repo archive df17966 | tar -x -C /tmp/llava_next_src
    cd /tmp && PYTHONPATH=/tmp/llava_next_src /work/authors_venv/bin/python \\
        /work/main/tests/data/golden_llava_next/make_llava_next_golden.py

It reuses the seeded initialisation, float formatting and drawn image of
`tests/data/golden_families/make_golden.py`.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SHARED = REPO.parent / "shared" / "golden" / "proxyv_release"
sys.path.insert(0, str(HERE.parent / "golden_families"))
from make_golden import (  # noqa: E402
    COMMON_LLM,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    PROMPT,
    TOKENIZER_FILES,
    draw_five_crop_image,
    f32_list,
    randomize,
)

IMAGES = ("images/img0.png", "images/img1.png", "images/img2.png", "images/img3.png", "images/img4.png")
UNPADDED_SIZES = {"images/img3.png": (640, 480), "images/img4.png": (480, 640)}  # AnyRes pads these
TOWER_PREFIX = "model.vision_tower.vision_tower."
ROW_STEP = 61
NEW_TOKENS = 6

LLAVA15_KEYS = {  # llava-v1.5-7b's multimodal keys (its config has no mm_patch_merge_type)
    "mm_vision_tower": "CLIP_DIR",
    "mm_hidden_size": 32,
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "image_aspect_ratio": "pad",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "tokenizer_model_max_length": 4096,
    "tokenizer_padding_side": "right",
    "use_mm_proj": True,
}
LLAVA16_KEYS = {  # llava-v1.6-vicuna-7b / -mistral-7b's
    **LLAVA15_KEYS,
    "image_aspect_ratio": "anyres",
    "mm_patch_merge_type": "spatial_unpad",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
}
LLAMA_LLM = {**COMMON_LLM, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None}
MISTRAL_LLM = {**COMMON_LLM, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": 4096}
CHECKPOINTS = {
    "llava15_vicuna": {"family": "llama", "seed": 3101, "keys": LLAVA15_KEYS},
    "llava16_vicuna": {"family": "llama", "seed": 3102, "keys": LLAVA16_KEYS},
    "llava16_vicuna_spatial": {"family": "llama", "seed": 3103, "keys": {**LLAVA16_KEYS, "mm_patch_merge_type": "spatial"}},
    "llava16_mistral": {"family": "mistral", "seed": 3104, "keys": LLAVA16_KEYS},
}


def draw_padded_image(path, size):
    """An image whose aspect ratio AnyRes must pad (672x672 canvas), so unpadding cuts rows or columns."""
    width, height = size
    image = Image.new("RGB", size, (245, 240, 228))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 10, height // 8, width // 2, height // 2], fill=(210, 40, 40))
    draw.ellipse([width // 2, height // 3, width - 20, height - 30], fill=(40, 90, 200))
    for k in range(6):
        draw.line([(0, k * height // 6), (width, height - k * height // 6)], fill=(60, 60, 60), width=4)
    image.save(path, format="PNG")


def their_classes(family):
    """LLaVA-NeXT's config and model classes (their package must be the `llava` on the path)."""
    import llava

    if not Path(llava.__file__).resolve().parent.parent.joinpath("scripts").is_dir():
        sys.exit(f"`llava` resolves to {llava.__file__}, not LLaVA-NeXT's source tree: fix PYTHONPATH")
    if family == "llama":
        from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
        return LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.language_model.llava_mistral import LlavaMistralConfig, LlavaMistralForCausalLM
    return LlavaMistralConfig, LlavaMistralForCausalLM


def config_dict(spec):
    config_class, _ = their_classes(spec["family"])
    config = config_class(**(LLAMA_LLM if spec["family"] == "llama" else MISTRAL_LLM)).to_dict()
    config.update(spec["keys"])
    config["architectures"] = ["LlavaLlamaForCausalLM" if spec["family"] == "llama" else "LlavaMistralForCausalLM"]
    config["_name_or_path"] = ""
    assert "image_newline_positions" not in config and "proxyv" not in config
    return config


def build_checkpoint(spec, clip_dir, out_dir):
    config_class, model_class = their_classes(spec["family"])
    config = config_dict(spec)
    live = dict(config, mm_vision_tower=str(clip_dir))
    live.pop("model_type")
    torch.manual_seed(spec["seed"])
    model = model_class(config_class(**live)).float().eval()
    with safe_open(str(clip_dir / "model.safetensors"), "pt") as clip:
        tower = {key: clip.get_tensor(key) for key in list(clip.keys())}
    model.get_model().vision_tower.vision_tower.load_state_dict(tower, strict=True)
    assert hasattr(model.get_model(), "image_newline") == ("unpad" in config.get("mm_patch_merge_type", ""))
    randomize(model, spec["seed"])
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    for file in TOKENIZER_FILES:
        shutil.copyfile(SHARED / "spatial_s1" / file, out_dir / file)


def load_their_model(checkpoint_dir, family, clip_dir, tmp_root):
    """Their `from_pretrained` on a copy with `CLIP_DIR` replaced, in fp32 with eager attention."""
    _, model_class = their_classes(family)
    target = Path(tmp_root) / checkpoint_dir.name
    shutil.copytree(checkpoint_dir, target)
    text = (target / "config.json").read_text()
    (target / "config.json").write_text(text.replace('"CLIP_DIR"', json.dumps(str(clip_dir))))
    model, info = model_class.from_pretrained(str(target), torch_dtype=torch.float32, attn_implementation="eager",
                                              output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    assert not problems, f"{checkpoint_dir.name}: {problems}"
    model.eval()
    with safe_open(str(checkpoint_dir / "model.safetensors"), "pt") as weights:
        state = model.state_dict()
        names = list(weights.keys())
        assert set(names) == set(state), sorted(set(names) ^ set(state))[:5]
        for key in names:
            assert torch.equal(weights.get_tensor(key), state[key]), key
    return model, model.get_vision_tower().image_processor


def prompt_ids(tokenizer):
    pieces = {key: tokenizer(text, add_special_tokens=False).input_ids for key, text in PROMPT.items()}
    prompt = pieces["prefix"] + [IMAGE_TOKEN_INDEX] + pieces["suffix"]
    labels = [IGNORE_INDEX] * len(prompt) + pieces["answer"]
    return prompt, prompt + pieces["answer"], labels


def run_case(model, processor, name, rel, image_path, prompt, input_ids, labels):
    from llava.mm_utils import process_images

    image = Image.open(image_path).convert("RGB")
    pixels = process_images([image], processor, model.config)
    crops = 1 if pixels.ndim == 4 else pixels.shape[1]
    with torch.no_grad():
        # Their multimodal step, then their decoder forward on its embeddings: LLaVA-NeXT's Mistral
        # forward passes `image_sizes` positionally into `modalities` (llava_mistral.py:80), which
        # breaks every AnyRes image, so the step is called here with keywords for both families.
        _, position_ids, attention_mask, _, embeds, expanded_labels = model.prepare_inputs_labels_for_multimodal(
            torch.tensor([input_ids]), None, None, None, torch.tensor([labels]), pixels, modalities=["image"],
            image_sizes=[list(image.size)])
        out = model(inputs_embeds=embeds, labels=expanded_labels, attention_mask=attention_mask,
                    position_ids=position_ids, use_cache=False, return_dict=True)
        generated = model.generate(inputs=torch.tensor([prompt]), images=pixels, image_sizes=[list(image.size)],
                                   do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, use_cache=True,
                                   pad_token_id=COMMON_LLM["pad_token_id"])
    logits = out.logits[0]
    seq_len = logits.shape[0]
    rows = sorted({*range(0, seq_len, ROW_STEP), seq_len - 1})
    return {
        "checkpoint": name,
        "image": rel,
        "image_size": list(image.size),
        "num_crops": crops,
        "input_ids": input_ids,
        "labels": labels,
        "prompt_ids": prompt,
        "seq_len": seq_len,
        "loss": f32_list(out.loss)[0],
        "last_logits": f32_list(logits[-1]),
        "rows": rows,
        "row_logits": [f32_list(logits[row]) for row in rows],
        "generated_ids": generated[0].tolist(),
    }


def main():
    import transformers
    from transformers import AutoTokenizer

    assert transformers.__version__ == "4.41.2", transformers.__version__
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    clip_dir = SHARED / "clip"
    (HERE / "images").mkdir(exist_ok=True)
    for rel in IMAGES[:2]:
        shutil.copyfile(SHARED / rel, HERE / rel)
    draw_five_crop_image(HERE / IMAGES[2])
    for rel, size in UNPADDED_SIZES.items():
        draw_padded_image(HERE / rel, size)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in CHECKPOINTS.items():
            build_checkpoint(spec, clip_dir, HERE / name)
            model, processor = load_their_model(HERE / name, spec["family"], clip_dir, tmp)
            prompt, input_ids, labels = prompt_ids(AutoTokenizer.from_pretrained(HERE / name))
            for rel in IMAGES:
                case = run_case(model, processor, name, rel, HERE / rel, prompt, input_ids, labels)
                print(f"{name} {rel}: crops {case['num_crops']} seq {case['seq_len']} loss {case['loss']:.6f} "
                      f"generated {case['generated_ids']}", flush=True)
                cases.append(case)
            del model
    document = {"image_token_index": IMAGE_TOKEN_INDEX, "ignore_index": IGNORE_INDEX, "prompt_text": PROMPT,
                "cases": cases}
    (HERE / "cases.json").write_text(json.dumps(document) + "\n")
    print(f"wrote {len(cases)} cases to {HERE / 'cases.json'}")


if __name__ == "__main__":
    main()
