"""Build the Qwen2 / Phi-3 ProxyV golden data in this folder with the authors' released code.

What it does
------------
1. Builds tiny random-init ProxyV checkpoints in the authors' release format (fixed seeds):
   `qwen2_spatial_s1`, `qwen2_learned_s2` (model_type `llava_qwen`), `phi3_spatial_s1` and
   `phi3_learned_s2` (model_type `llava_phi`). Each folder gets `config.json` (with the placeholder
   `"mm_vision_tower": "CLIP_DIR"`), `model.safetensors` (every parameter of the authors' model,
   the CLIP tower's weights included under `model.vision_tower.vision_tower.vision_model.*`, copied
   from the shared tiny CLIP) and the shared tiny word tokenizer's files.
2. Writes `images/img0.png`, `images/img1.png` (copies of the shared Llama golden images: 3 and 4
   AnyRes crops) and draws `images/img2.png` (1000x1000, 5 crops).
3. Loads every checkpoint back with the authors' `from_pretrained` (fp32, eager attention, the
   CLIP placeholder pointing at the shared tiny CLIP), asserts no missing / unexpected keys, and for
   every checkpoint x image runs their forward (batch of one, `use_cache=False`, pixels from their
   `process_images`) to record loss, last-token logits and the logits of every non-vision row,
   under their own ("release") newline positions and under the natural scheme.
4. Writes `cases.json` (same format as the shared Llama golden `cases.json`).

`--verify-llama` instead reruns the shared Llama golden cases with this same harness and checks
that it reproduces their `cases.json` (a check of the harness: prompt, pixels, row order, natural
scheme), writing nothing.

How to run
----------
It must run inside the authors' environment: a virtualenv with torch 2.13.0 (CPU),
transformers 4.41.2, safetensors, pillow, einops, requests, and the authors' repository
(penghao-wu/ProxyV, commit 42d6d97, unmodified) on PYTHONPATH so that `import llava` is THEIR
package, not ours. From the repository root:

    git -C /work/.mirror/penghao-wu+ProxyV/repo archive 42d6d97 | tar -x -C /tmp/authors_src
    cd /tmp && PYTHONPATH=/tmp/authors_src /work/authors_venv/bin/python \
        /work/main/tests/data/golden_families/make_golden.py [--verify-llama]

(Run it from a directory outside our repository so that our own `llava` package is not found
first.) The shared golden folder defaults to `<repo>/../shared/golden/proxyv_release`
(`--shared` to change it).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_SHARED = REPO.parent / "shared" / "golden" / "proxyv_release"

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
PROMPT = {
    "prefix": "A chat between a curious human and an artificial intelligence assistant. USER:",
    "suffix": "What is the red square ASSISTANT:",
    "answer": "the red square is at the top",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
IMAGES = ("images/img0.png", "images/img1.png", "images/img2.png")
TOWER_PREFIX = "model.vision_tower.vision_tower."
GRID = 24  # 336 / 14
VISION_SAMPLE_FIRST = (0, 301)  # full tokens (raster index) of crop 0 whose logits are kept
VISION_SAMPLE_LAST = (250, 575)  # ... and of the last crop
CROP = GRID * GRID  # 576 full tokens per crop

# The LLaVA / ProxyV keys of the authors' release config (same values as the Llama golden).
LLAVA_KEYS = {
    "mm_vision_tower": "CLIP_DIR",
    "mm_hidden_size": 32,
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_patch_merge_type": "spatial_unpad",
    "image_aspect_ratio": "anyres",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "tokenizer_model_max_length": 4096,
    "tokenizer_padding_side": "right",
    "use_mm_proj": True,
    "proxyv": True,
    "proxyv_start_layer": 1,
    "proxyv_reduce_factor": 4,
    "per_crop_token_len": CROP,
    "max_num_image_crops": 5,
    "learn_proxy": False,
    "hidden_size_reduce_factor": 2,
    "image_token_len_per_side": GRID,
}

COMMON_LLM = {
    "vocab_size": 190,  # = len(tokenizer) of the tiny word tokenizer
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "initializer_range": 0.02,
    "use_cache": True,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
    "torch_dtype": "float32",
}
QWEN2_LLM = {**COMMON_LLM, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
             "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 3}
# Phi-3-mini-4k has sliding_window 2047; here it is far below every case's sequence length.
PHI3_LLM = {**COMMON_LLM, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
            "original_max_position_embeddings": 4096, "sliding_window": 511,
            "embd_pdrop": 0.0, "resid_pdrop": 0.0}

# The learned-proxy checkpoints have 4 layers: the guided update of the last layer never reaches a
# text row (only the vision rows' logits), so with 3 layers and ProxyV from layer 2 the learned
# splat `A P` (and its absence in their Phi-3 code) would not show in the loss or text logits.
CHECKPOINTS = {
    "qwen2_spatial_s1": {"family": "qwen2", "seed": 2101, "layers": 3, "proxyv_start_layer": 1, "learn_proxy": False},
    "qwen2_learned_s2": {"family": "qwen2", "seed": 2102, "layers": 4, "proxyv_start_layer": 2, "learn_proxy": True},
    "phi3_spatial_s1": {"family": "phi3", "seed": 2103, "layers": 3, "proxyv_start_layer": 1, "learn_proxy": False},
    "phi3_learned_s2": {"family": "phi3", "seed": 2104, "layers": 4, "proxyv_start_layer": 2, "learn_proxy": True},
}


def authors_classes(family):
    """The authors' config and model classes (their package must be the `llava` on the path)."""
    import llava

    if not Path(llava.__file__).resolve().parent.parent.joinpath("demo.py").is_file():
        sys.exit(f"`llava` resolves to {llava.__file__}, not the authors' source tree: fix PYTHONPATH")
    if family == "qwen2":
        from llava.model.language_model.llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM
        return LlavaQwenConfig, LlavaQwenForCausalLM
    if family == "phi3":
        from llava.model.language_model.llava_phi3 import LlavaPhiConfig, LlavaPhiForCausalLM
        return LlavaPhiConfig, LlavaPhiForCausalLM
    if family == "llama":
        from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
        return LlavaConfig, LlavaLlamaForCausalLM
    raise ValueError(family)


# ----------------------------------------------------------------------------- checkpoints

def config_dict(name, spec):
    config_class, _ = authors_classes(spec["family"])
    llm = QWEN2_LLM if spec["family"] == "qwen2" else PHI3_LLM
    config = config_class(**dict(llm, num_hidden_layers=spec["layers"])).to_dict()
    config.update(LLAVA_KEYS)
    config["proxyv_start_layer"] = spec["proxyv_start_layer"]
    config["learn_proxy"] = spec["learn_proxy"]
    config["architectures"] = ["LlavaQwenForCausalLM" if spec["family"] == "qwen2" else "LlavaPhiForCausalLM"]
    config["_name_or_path"] = ""
    assert config["model_type"] == ("llava_qwen" if spec["family"] == "qwen2" else "llava_phi"), config["model_type"]
    assert "image_newline_positions" not in config
    return config


GAIN_WIDE = ("q_proj", "k_proj", "qkv_proj", "Wk", "input_proj", "context_proj", "proj.0", "mm_projector")


def randomize(model, seed):
    """Every parameter outside the CLIP tower drawn from a seeded generator, at scales that give
    O(1) logits and attention that is far from uniform (the default 0.02 init gives neither)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.startswith(TOWER_PREFIX):
                continue
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight") or name.endswith("layernorm_post.weight"):
                value = 1.0 + 0.08 * noise
            elif name.endswith(".bias"):
                value = 0.3 * noise if "self_attn" in name else 0.08 * noise
            elif name in ("model.embed_tokens.weight", "model.image_newline"):
                value = 0.5 * noise
            elif name == "lm_head.weight":
                value = 0.2 * noise
            elif name.endswith("proxyv_tokens"):
                value = noise / math.sqrt(param.shape[-1])
            elif param.ndim == 2:
                gain = 1.7 if any(key in name for key in GAIN_WIDE) else 0.9
                value = gain * noise / math.sqrt(param.shape[1])
            else:
                raise AssertionError(f"no init rule for {name} {tuple(param.shape)}")
            param.copy_(value)


def build_checkpoint(name, spec, clip_dir, out_dir):
    config_class, model_class = authors_classes(spec["family"])
    config = config_dict(name, spec)
    live = dict(config, mm_vision_tower=str(clip_dir))
    live.pop("model_type")
    torch.manual_seed(spec["seed"])
    model = model_class(config_class(**live)).float().eval()
    # The tower's weights: exactly the shared tiny CLIP's (as in the Llama golden checkpoints).
    with safe_open(str(clip_dir / "model.safetensors"), "pt") as clip:
        names = list(clip.keys())  # a safe_open handle is not iterable
        tower = {key: clip.get_tensor(key) for key in names}
    model.get_model().vision_tower.vision_tower.load_state_dict(tower, strict=True)
    randomize(model, spec["seed"])

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    assert sum(key.startswith(TOWER_PREFIX + "vision_model.") for key in state) == len(tower)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    for file in TOKENIZER_FILES:
        shutil.copyfile(SHARED / "spatial_s1" / file, out_dir / file)


def draw_five_crop_image(path):
    """1000x1000 (AnyRes picks 672x672: base + 2x2 tiles = 5 crops); fixed shapes, no randomness."""
    image = Image.new("RGB", (1000, 1000), (236, 232, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle([60, 50, 330, 300], fill=(220, 30, 30))
    draw.ellipse([600, 120, 930, 450], fill=(30, 80, 210))
    draw.polygon([(150, 900), (420, 520), (640, 930)], fill=(40, 170, 70))
    draw.rectangle([700, 640, 960, 960], fill=(250, 200, 20), outline=(0, 0, 0), width=12)
    for k in range(8):
        draw.line([(0, 125 * k), (1000, 1000 - 125 * k)], fill=(90, 90, 90), width=5)
    draw.ellipse([430, 430, 570, 570], fill=(255, 255, 255), outline=(120, 0, 160), width=20)
    image.save(path, format="PNG")


# ----------------------------------------------------------------------------- running their model

def load_authors_model(checkpoint_dir, family, clip_dir, tmp_root):
    """Their `from_pretrained` on a copy with `CLIP_DIR` replaced (as their builder does, in fp32)."""
    _, model_class = authors_classes(family)
    target = Path(tmp_root) / checkpoint_dir.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(checkpoint_dir, target)
    text = (target / "config.json").read_text()
    assert '"CLIP_DIR"' in text
    (target / "config.json").write_text(text.replace('"CLIP_DIR"', json.dumps(str(clip_dir))))
    model, info = model_class.from_pretrained(str(target), torch_dtype=torch.float32, attn_implementation="eager",
                                              output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    assert not problems, f"{checkpoint_dir.name}: {problems}"
    model.eval()
    tower = model.get_vision_tower()
    assert tower.is_loaded
    with safe_open(str(checkpoint_dir / "model.safetensors"), "pt") as weights:
        state = model.state_dict()
        names = list(weights.keys())  # a safe_open handle is not iterable
        assert set(names) == set(state), sorted(set(names) ^ set(state))[:5]
        for key in names:
            assert torch.equal(weights.get_tensor(key), state[key]), key
    attention = type(model.get_model().layers[0].self_attn).__name__
    assert attention in ("LlamaAttention", "Qwen2Attention", "Phi3Attention"), attention
    return model, tower.image_processor


class Capture:
    """Wraps their `prepare_inputs_labels_for_multimodal` to keep the position ids it builds, and
    optionally moves the crops' newline tokens to the natural scheme."""

    def __init__(self):
        from llava.model.llava_arch import LlavaMetaForCausalLM

        self.meta = LlavaMetaForCausalLM
        self.original_prepare = LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal
        self.original_image_info = LlavaMetaForCausalLM.prepare_image_information
        self.natural = False
        self.outputs = None
        capture = self

        def prepare(model, *args, **kwargs):
            capture.outputs = capture.original_prepare(model, *args, **kwargs)
            return capture.outputs

        def image_info(model, image_feature, image_size=None, is_dummy=False, dummy_num=1, modality="image"):
            info = capture.original_image_info(model, image_feature, image_size, is_dummy, dummy_num, modality)
            if capture.natural and not is_dummy and modality != "video" and image_feature.shape[0] > 1:
                # What their commented-out line (llava_arch.py:342) would do: crop c >= 1's newline
                # after its own 576 tokens instead of 577 positions earlier.
                hw = model.get_model().config.per_crop_token_len
                newline = info["position_ids_newline"]
                info["position_ids_newline"] = torch.cat([newline[:1], newline[1:] + hw + 1])
            return info

        LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal = prepare
        LlavaMetaForCausalLM.prepare_image_information = image_info


def prompt_ids(tokenizer):
    pieces = {key: tokenizer(text, add_special_tokens=False).input_ids for key, text in PROMPT.items()}
    input_ids = pieces["prefix"] + [IMAGE_TOKEN_INDEX] + pieces["suffix"] + pieces["answer"]
    labels = [IGNORE_INDEX] * (len(input_ids) - len(pieces["answer"])) + pieces["answer"]
    return input_ids, labels


def f32_list(values):
    """float32 values as the shortest decimal that round-trips to the same float32."""
    return [float(str(np.float32(v))) for v in np.asarray(values, dtype=np.float32).reshape(-1)]


def run_case(model, processor, capture, checkpoint_name, image_rel, image_path, input_ids, labels, natural=False):
    from llava.mm_utils import process_images

    image = Image.open(image_path).convert("RGB")
    pixels = process_images([image], processor, model.config)
    assert pixels.ndim == 5 and pixels.shape[0] == 1 and tuple(pixels.shape[-2:]) == (336, 336), pixels.shape
    crops = pixels.shape[1]
    capture.natural = natural
    with torch.no_grad():
        out = model(input_ids=torch.tensor([input_ids]), labels=torch.tensor([labels]), images=pixels,
                    image_sizes=[list(image.size)], use_cache=False, return_dict=True)
    capture.natural = False
    position_ids = capture.outputs[1][0]
    image_start = input_ids.index(IMAGE_TOKEN_INDEX)
    n_text = len(input_ids) - 1
    seq_len = n_text + crops * (CROP + 1)
    assert out.logits.shape == (1, seq_len, model.config.vocab_size), out.logits.shape
    assert out.logits.dtype == torch.float32

    # Their rows are [full tokens of every crop, the crops' newlines, text]; natural index of each.
    full = [image_start + (CROP + 1) * c + k for c in range(crops) for k in range(CROP)]
    newline = [image_start + (CROP + 1) * c + CROP for c in range(crops)]
    text = list(range(image_start)) + [image_start + crops * (CROP + 1) + j for j in range(n_text - image_start)]
    natural_index = full + newline + text
    assert sorted(natural_index) == list(range(seq_len))
    # Full and text tokens sit at their natural positions in both schemes.
    assert position_ids[:crops * CROP].tolist() == full
    assert position_ids[crops * (CROP + 1):].tolist() == text
    newline_positions = position_ids[crops * CROP: crops * (CROP + 1)].tolist()
    release = [image_start + CROP] + [image_start + (CROP + 1) * (c - 1) + CROP for c in range(1, crops)]
    assert newline_positions == (newline if natural else release), newline_positions

    logits = out.logits[0]
    rows = sorted(range(crops * CROP, seq_len), key=lambda row: natural_index[row])  # non-vision rows
    vision_rows = [k for k in VISION_SAMPLE_FIRST] + [(crops - 1) * CROP + k for k in VISION_SAMPLE_LAST]
    result = {
        "checkpoint": checkpoint_name,
        "image": image_rel,
        "image_size": list(image.size),
        "num_crops": crops,
        "input_ids": input_ids,
        "labels": labels,
        "seq_len": seq_len,
        "image_start": image_start,
        "newline_position_ids": release,
        "natural_newline_position_ids": newline,
        "loss": f32_list(out.loss)[0],
        "last_logits": f32_list(logits[-1]),
        "text_rows_natural_index": [natural_index[row] for row in rows],
        "text_logits_natural": [f32_list(logits[row]) for row in rows],
        # A few full-token rows (their only route to the output is the last layer's guided update).
        "vision_rows_natural_index": [natural_index[row] for row in vision_rows],
        "vision_logits_natural": [f32_list(logits[row]) for row in vision_rows],
    }
    assert result["text_rows_natural_index"][-1] == seq_len - 1
    return result, out


def window_diagnostic(model, processor, capture, image_path, input_ids, labels, window):
    """Loss if a sliding window (key visible iff q_pos - k_pos <= window) WERE applied in both of
    their prefill masks; only printed for the README, never stored as a golden value."""
    import llava.model.llava_arch as arch

    original = arch.calculate_causal_attention_mask

    def windowed(position_ids_q, position_ids_kv, attention_mask, dtype=torch.bfloat16):
        mask = original(position_ids_q, position_ids_kv, attention_mask, dtype)
        bs = position_ids_q.shape[0]
        distance = position_ids_q.view(bs, 1, -1, 1) - position_ids_kv.view(bs, 1, 1, -1)
        return mask.masked_fill(distance > window, torch.finfo(dtype).min)

    arch.calculate_causal_attention_mask = windowed
    try:
        _, out = run_case(model, processor, capture, "", "", image_path, input_ids, labels)
    finally:
        arch.calculate_causal_attention_mask = original
    return out


# ----------------------------------------------------------------------------- main

def verify_llama(capture):
    cases = json.loads((SHARED / "cases.json").read_text())
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted({case["checkpoint"] for case in cases["cases"]}):
            model, processor = load_authors_model(SHARED / name, "llama", SHARED / "clip", tmp)
            from transformers import AutoTokenizer

            input_ids, labels = prompt_ids(AutoTokenizer.from_pretrained(SHARED / name))
            for case in (c for c in cases["cases"] if c["checkpoint"] == name):
                assert case["input_ids"] == input_ids and case["labels"] == labels
                got, _ = run_case(model, processor, capture, name, case["image"], SHARED / case["image"], input_ids, labels)
                nat, out_nat = run_case(model, processor, capture, name, case["image"], SHARED / case["image"],
                                        input_ids, labels, natural=True)
                for key in ("image_size", "num_crops", "seq_len", "image_start", "newline_position_ids",
                            "natural_newline_position_ids", "text_rows_natural_index"):
                    assert got[key] == case[key], (key, got[key], case[key])
                diffs = [abs(got["loss"] - case["loss"]),
                         float(np.abs(np.subtract(got["last_logits"], case["last_logits"])).max()),
                         float(np.abs(np.subtract(got["text_logits_natural"], case["text_logits_natural"])).max()),
                         abs(nat["loss"] - case["natural_scheme"]["loss"]),
                         float(np.abs(np.subtract(nat["last_logits"], case["natural_scheme"]["last_logits"])).max())]
                worst = max(worst, *diffs)
                print(f"llama {name} {case['image']}: max |diff| release/natural = {max(diffs):.3g}")
    print(f"worst difference against the shared Llama golden: {worst:.3g}")
    assert worst <= 1e-5, worst


def main():
    global SHARED
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared Llama golden folder")
    parser.add_argument("--verify-llama", action="store_true", help="only check this harness against the Llama golden")
    args = parser.parse_args()
    SHARED = args.shared.resolve()
    clip_dir = SHARED / "clip"
    assert "clip" in str(clip_dir).lower()  # their build_vision_tower picks CLIP by this substring
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    import transformers

    assert transformers.__version__ == "4.41.2", transformers.__version__
    capture = Capture()
    if args.verify_llama:
        verify_llama(capture)
        return

    (HERE / "images").mkdir(exist_ok=True)
    for rel in IMAGES[:2]:
        shutil.copyfile(SHARED / rel, HERE / rel)
    draw_five_crop_image(HERE / IMAGES[2])

    from transformers import AutoTokenizer

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in CHECKPOINTS.items():
            build_checkpoint(name, spec, clip_dir, HERE / name)
            model, processor = load_authors_model(HERE / name, spec["family"], clip_dir, tmp)
            assert model.config.sliding_window == (PHI3_LLM if spec["family"] == "phi3" else QWEN2_LLM)["sliding_window"]
            input_ids, labels = prompt_ids(AutoTokenizer.from_pretrained(HERE / name))
            for rel in IMAGES:
                case, out = run_case(model, processor, capture, name, rel, HERE / rel, input_ids, labels)
                natural, _ = run_case(model, processor, capture, name, rel, HERE / rel, input_ids, labels, natural=True)
                case["natural_scheme"] = {"loss": natural["loss"], "last_logits": natural["last_logits"]}
                line = f"{name} {rel}: crops {case['num_crops']} seq {case['seq_len']} loss {case['loss']:.6f} natural {natural['loss']:.6f}"
                if spec["family"] == "phi3":
                    # Their prefill never reads config.sliding_window: the same run without it is bitwise equal.
                    window = model.config.sliding_window
                    model.config.sliding_window = None
                    _, no_window = run_case(model, processor, capture, name, rel, HERE / rel, input_ids, labels)
                    model.config.sliding_window = window
                    assert torch.equal(no_window.logits, out.logits) and torch.equal(no_window.loss, out.loss)
                    windowed = window_diagnostic(model, processor, capture, HERE / rel, input_ids, labels, window)
                    line += (f" | sliding_window=None: identical | if a {window} window were applied: loss "
                             f"{windowed.loss.item():.6f}, max |d last_logits| "
                             f"{(windowed.logits[0, -1] - out.logits[0, -1]).abs().max().item():.4f}")
                print(line, flush=True)
                cases.append(case)
            del model

    document = {
        "image_token_index": IMAGE_TOKEN_INDEX,
        "ignore_index": IGNORE_INDEX,
        "prompt_text": PROMPT,
        "cases": cases,
    }
    (HERE / "cases.json").write_text(json.dumps(document) + "\n")
    print(f"wrote {len(cases)} cases to {HERE / 'cases.json'}")


SHARED = DEFAULT_SHARED

if __name__ == "__main__":
    main()
