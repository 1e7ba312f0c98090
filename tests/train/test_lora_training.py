"""LoRA stage 2 through the real `llava/train/train.py` on the tiny model: in one process (saving,
resuming, loading with the base, merging) and under DeepSpeed ZeRO-3 in two CPU processes (the
adapter and the fully trained weights are gathered whole when saved)."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from llava.model.builder import load_pretrained_model
from llava.model.lora_weights import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, NON_LORA_FILE
from llava.tools import merge_lora
from tests.train.test_two_stage import _answers, _run, _stage1, _stage2

LORA = ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proxyv_stage1(tiny_assets, tmp_path_factory):
    stage1 = tmp_path_factory.mktemp("proxyv_stage1")
    _run(_stage1(tiny_assets, stage1, "--proxyv_start_layer", "2", "--proxyv_reduce_factor", "2"))
    return stage1


def _logits(model_dir, model_base=None) -> torch.Tensor:
    tokenizer, model, _, _ = load_pretrained_model(str(model_dir), model_base and str(model_base), device="cpu")
    ids = tokenizer("USER: what is in the picture ? ASSISTANT:", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def _adapter_layers(folder) -> int:
    weights = load_file(str(folder / ADAPTER_WEIGHTS_FILE))
    assert all(value.numel() > 0 for value in weights.values())  # whole tensors, not ZeRO-3 shards
    return sum(".lora_A." in key for key in weights)


def test_lora_stage2_saves_resumes_loads_and_merges(tiny_assets, proxyv_stage1, tmp_path):
    out = tmp_path / "lora"
    args = [*_stage2(tiny_assets, out, proxyv_stage1 / "mm_projector.bin", "--proxyv_start_layer", "2", "--proxyv_reduce_factor", "2",
                     "--save_strategy", "steps", "--save_steps", "2"), *LORA]
    log = _run([*args, "--max_steps", "2"])
    assert re.search(r"LoRA adapters\s+[\d,]+ parameters\s+TRAINED", log), log[-3000:]
    assert re.search(r"mm_language_model\s+[\d,]+ parameters\s+frozen", log), log[-3000:]
    checkpoint = out / "checkpoint-2"
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, NON_LORA_FILE):
        assert (checkpoint / name).is_file(), name
    log = _run([*args, "--max_steps", "4"])
    assert "Resuming from" in log and "checkpoint-2" in log
    # The fully trained weights come back from the checkpoint (transformers reloads the adapter).
    assert re.search(rf"Loaded \d+ multimodal weights from \S*checkpoint-2/{NON_LORA_FILE}", log), log[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_proxyv_llama" and config["proxyv_start_layer"] == 2
    non_lora = torch.load(out / NON_LORA_FILE, weights_only=True)
    assert any(k.startswith("model.mm_projector.") for k in non_lora)
    assert any(k.startswith("model.vision_mlp_layers.") for k in non_lora)
    assert _adapter_layers(out) == 7 * config["num_hidden_layers"]  # q, k, v, o, gate, up, down per layer

    assert _answers_with_base(out, tiny_assets) == "LlavaProxyVLlamaForCausalLM"
    merged = tmp_path / "merged"
    assert merge_lora.main(["--model-path", str(out), "--model-base", str(tiny_assets.llm),
                            "--save-model-path", str(merged)]) == 0
    torch.testing.assert_close(_logits(merged), _logits(out, tiny_assets.llm), rtol=1e-4, atol=1e-4)
    assert _answers(merged, tiny_assets) == "LlavaProxyVLlamaForCausalLM"  # no base needed any more


def _answers_with_base(lora_dir, assets) -> str:
    from llava.eval.run_llava import answer
    from llava.mm_utils import load_image

    tokenizer, model, processor, _ = load_pretrained_model(str(lora_dir), str(assets.llm), device="cpu")
    reply = answer(tokenizer, model, processor, [load_image(assets.example_image())], "What color is the background?",
                   "vicuna_v1", max_new_tokens=4)
    assert isinstance(reply, str)
    return type(model).__name__


def test_zero3_lora_saves_whole_adapter_and_non_lora_weights(tiny_assets, proxyv_stage1, deepspeed_cpu_ops, tmp_path):
    """Two ranks under ZeRO-3: the adapter trains, and what the checkpoint's adapter and
    non_lora_trainables.bin hold equals the trained weights as DeepSpeed itself stored them (its
    partitioned optimizer checkpoint, consolidated by DeepSpeed's own zero_to_fp32): gathered whole."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from llava.model.lora_weights import plain_name

    out = tmp_path / "lora"
    _run([*_stage2(tiny_assets, out, proxyv_stage1 / "mm_projector.bin", "--proxyv_start_layer", "2", "--proxyv_reduce_factor", "2",
                   "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2"),
          *LORA, "--learning_rate", "5e-2"], deepspeed=True)
    checkpoint = out / "checkpoint-2"
    config = json.loads((checkpoint / "config.json").read_text())
    assert _adapter_layers(checkpoint) == 7 * config["num_hidden_layers"]
    adapter = load_file(str(checkpoint / ADAPTER_WEIGHTS_FILE))
    non_lora = torch.load(checkpoint / NON_LORA_FILE, weights_only=True)
    trained = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), exclude_frozen_parameters=True)
    lora_keys = [key for key in trained if ".lora_" in key]
    assert len(lora_keys) == len(adapter) and any(".lora_B." in key and trained[key].abs().sum() > 0 for key in lora_keys)
    for key, value in trained.items():
        saved = adapter[key.replace(".default.", ".")] if key in lora_keys else non_lora[plain_name(key)]
        torch.testing.assert_close(saved.float(), value.float(), rtol=0, atol=1e-6, msg=key)
    assert _answers_with_base(out, tiny_assets) == "LlavaProxyVLlamaForCausalLM"
