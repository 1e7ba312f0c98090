"""The authors' released ProxyV format: golden outputs, save/reload, and a synthetic release checkpoint.

The golden cases (`../shared/golden/proxyv_release/` beside the repository) hold tiny checkpoints in the authors'
format and the loss / logits the authors' own implementation produced for them (release newline
positions, plus the same under the natural scheme). They load here through our builder, with
real 576-token AnyRes crops from `process_images`, and must match to 1e-4. The other tests check
that our own save of such a model reloads (Auto class and builder) to the same logits, and that a
checkpoint written in the authors' format from a tiny in-process model loads back exactly.
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import LlavaProxyVLlamaForCausalLM
from llava.model.builder import load_pretrained_model
from tests.golden_helpers import (
    TOWER_IN_FILE,
    assert_all_weights_from_file,
    case_id,
    case_inputs,
    copy_golden_checkpoints,
    release_name,
)
from tests.paths import GOLDEN
from tests.proxyv_fixtures import (
    IMAGE_SIZE,
    NUM_LAYERS,
    random_crops,
    save_clip_folder,
    tiny_proxyv_model,
    tiny_word_tokenizer,
)

CASES = json.loads((GOLDEN / "cases.json").read_text())["cases"] if GOLDEN.is_dir() else []
ATOL = 1e-4

pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden outputs not present")


@pytest.fixture(scope="module")
def golden_dirs(tmp_path_factory):
    """The golden checkpoints copied to tmp with `CLIP_DIR` pointing at the golden CLIP folder."""
    names = {case["checkpoint"] for case in CASES}
    return copy_golden_checkpoints(names, GOLDEN, GOLDEN / "clip", tmp_path_factory.mktemp("golden"))


def load(path, impl="eager"):
    tokenizer, model, processor, _ = load_pretrained_model(str(path), None, None, device="cpu",
                                                           attn_implementation=impl)
    return tokenizer, model, processor


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_release_outputs(case, impl, golden_dirs):
    checkpoint = golden_dirs[case["checkpoint"]]
    _, model, processor = load(checkpoint, impl)
    assert type(model) is LlavaProxyVLlamaForCausalLM
    assert model.config.image_newline_positions == "release"
    assert model.config._attn_implementation == impl
    assert_all_weights_from_file(model, checkpoint)
    with torch.no_grad():
        out = model(**case_inputs(case, processor, model.config, GOLDEN))
    assert out.logits.shape[1] == case["seq_len"]
    torch.testing.assert_close(out.loss, torch.tensor(case["loss"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[0, -1], torch.tensor(case["last_logits"]), atol=ATOL, rtol=0)
    rows = out.logits[0, case["text_rows_natural_index"]]
    torch.testing.assert_close(rows, torch.tensor(case["text_logits_natural"]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_natural_scheme_outputs(case, golden_dirs):
    _, model, processor = load(golden_dirs[case["checkpoint"]], "eager")
    model.config.image_newline_positions = "natural"
    with torch.no_grad():
        out = model(**case_inputs(case, processor, model.config, GOLDEN))
    expected = case["natural_scheme"]
    torch.testing.assert_close(out.loss, torch.tensor(expected["loss"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[0, -1], torch.tensor(expected["last_logits"]), atol=ATOL, rtol=0)


def test_save_and_reload_release_checkpoint(golden_dirs, tmp_path):
    tokenizer, model, _ = load(golden_dirs["learned_s2"], "eager")
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "llava_proxyv_llama"
    assert config["image_newline_positions"] == "release"
    assert config["proxyv_start_layer"] == 2 and config["learn_proxy"] is True

    ids = torch.tensor([[1, 40, 41, IMAGE_TOKEN_INDEX, 42, 43, 44]])
    pixels = random_crops([2], seed=9, image_size=336)  # two crops: the newline scheme matters

    def logits_of(m):
        with torch.no_grad():
            return m(input_ids=ids, images=pixels, use_cache=False).logits

    expected = logits_of(model)
    auto = AutoModelForCausalLM.from_pretrained(saved, attn_implementation="eager").float().eval()
    assert type(auto) is LlavaProxyVLlamaForCausalLM
    assert auto.config.image_newline_positions == "release"
    torch.testing.assert_close(logits_of(auto), expected, atol=1e-6, rtol=0)
    _, rebuilt, processor = load(saved, "eager")
    assert type(rebuilt) is LlavaProxyVLlamaForCausalLM
    assert processor is not None
    torch.testing.assert_close(logits_of(rebuilt), expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- a synthetic release checkpoint

RELEASE_NAME_PREFIXES = (
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "model.layers.",
    "model.mm_projector.0.",
    "model.mm_projector.2.",
    "model.image_newline",
    "model.vision_tower.vision_tower.vision_model.",
    "model.proxyv_initializer.Wk.weight",
    "model.proxyv_initializer.proxyv_tokens",
)
VISION_MLP_SUFFIXES = ("input_proj.weight", "context_proj.weight", "proj.0.weight", "proj.2.weight",
                       "layernorm_post.weight")


def write_release_checkpoint(model, path, clip_dir):
    """`model` saved the way the authors' release is: `llava_llama` + `proxyv` config, their names."""
    path.mkdir()
    config = json.loads((GOLDEN / "spatial_s1" / "config.json").read_text())
    ours = model.config
    config.update({
        "vocab_size": ours.vocab_size,
        "hidden_size": ours.hidden_size,
        "intermediate_size": ours.intermediate_size,
        "num_hidden_layers": ours.num_hidden_layers,
        "num_attention_heads": ours.num_attention_heads,
        "num_key_value_heads": ours.num_key_value_heads,
        "rms_norm_eps": ours.rms_norm_eps,
        "pad_token_id": 0,
        "mm_vision_tower": str(clip_dir),
        "mm_hidden_size": ours.mm_hidden_size,
        "proxyv_start_layer": ours.proxyv_start_layer,
        "proxyv_reduce_factor": ours.proxyv_reduce_factor,
        "per_crop_token_len": ours.per_crop_token_len,
        "learn_proxy": ours.learn_proxy,
        "hidden_size_reduce_factor": ours.hidden_size_reduce_factor,
        "image_token_len_per_side": ours.image_token_len_per_side,
    })
    assert config["model_type"] == "llava_llama" and config["proxyv"] is True
    assert "image_newline_positions" not in config and "mm_vision_tower_config" not in config
    (path / "config.json").write_text(json.dumps(config, indent=1))

    state = {release_name(name): tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    for name in state:
        is_mlp = name.startswith("model.vision_mlp_layers.") and name.endswith(VISION_MLP_SUFFIXES)
        assert is_mlp or name.startswith(RELEASE_NAME_PREFIXES), f"not a release parameter name: {name}"
    assert any(name.startswith(TOWER_IN_FILE) for name in state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    tiny_word_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("learn_proxy", [False, True], ids=["spatial", "learned"])
def test_synthetic_release_checkpoint_loads_exactly(learn_proxy, tmp_path):
    model = tiny_proxyv_model(seed=51, proxyv_start_layer=1, learn_proxy=learn_proxy,
                              image_newline_positions="release")
    # The tower folder holds *other* weights: the checkpoint's own tower weights must win.
    clip_dir = save_clip_folder(tmp_path / "clip", seed=99, image_size=IMAGE_SIZE)
    checkpoint = write_release_checkpoint(model, tmp_path / "release", clip_dir)

    _, loaded, processor = load(checkpoint, "eager")
    assert type(loaded) is LlavaProxyVLlamaForCausalLM
    assert loaded.config.image_newline_positions == "release"
    assert loaded.config.proxyv_start_layer == 1 and loaded.config.learn_proxy is learn_proxy
    assert len(loaded.model.vision_mlp_layers) == NUM_LAYERS - 1
    assert processor is not None
    assert_all_weights_from_file(loaded, checkpoint)

    ids = torch.tensor([[1, 5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9]])
    labels = ids.clone()
    labels[0, :4] = -100
    crops = random_crops([3], seed=10)
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels, images=crops, use_cache=False)
        got = loaded(input_ids=ids, labels=labels, images=crops, use_cache=False)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-6, rtol=0)
