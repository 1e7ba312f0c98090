"""LoRA (PEFT) on the tiny models of every family, in-process: what trains, that it learns, that the
adapter reaches every projection the ProxyV layers use (Phi-3's fused ones included), and that a
saved LoRA folder loads (and merges) to the in-memory model's logits, with clear errors for a base
that does not fit. The training entry point's LoRA runs are in `test_lora_training.py`."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llava.errors import DamagedInputError, UsageError
from llava.model.builder import load_pretrained_model
from llava.model.lora_weights import NON_LORA_FILE, is_lora_parameter, plain_name
from llava.tools import merge_lora
from llava.train.lora import enable_lora, lora_target_modules, save_non_lora_trainables
from llava.train.tunable import DEFAULT_TUNABLE_PARTS, parse_tunable_parts
from tests.model_fixtures import adamw_steps
from tests.proxyv_fixtures import (
    FAMILY_NAMES,
    MIXED_CROPS,
    MIXED_SAMPLES,
    baseline_twin,
    pad_batch,
    random_crops,
    save_clip_folder,
    tiny_proxyv_model,
    tiny_word_tokenizer,
)

PARTS = parse_tunable_parts(DEFAULT_TUNABLE_PARTS)
FULLY_TRAINED = ("model.mm_projector.", "model.image_newline", "model.vision_mlp_layers.")


def lora_args(**overrides):
    values = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_bias": "none", "bits": 16,
              "gradient_checkpointing": False}
    return SimpleNamespace(**{**values, **overrides})


def batch(with_labels: bool = False) -> dict:
    ids, mask = pad_batch(MIXED_SAMPLES, side="right")
    inputs = {"input_ids": ids, "attention_mask": mask, "images": random_crops(MIXED_CROPS, seed=3)}
    if with_labels:
        labels = ids.clone()
        labels[mask == 0] = -100
        inputs["labels"] = labels
    return inputs


def lora_model(family: str, proxyv: bool = True, seed: int = 0):
    model = tiny_proxyv_model(seed=seed, family=family, attn_implementation="sdpa")
    if not proxyv:
        model = baseline_twin(model, "sdpa")
    return enable_lora(model, lora_args(), PARTS)


def randomise_adapters(peft_model, seed: int = 5) -> None:
    """Non-zero LoRA B matrices (fresh ones are zero), so the adapters change every adapted layer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_only_adapters_and_multimodal_parts_train(family):
    peft_model = lora_model(family)
    base = peft_model.get_base_model()
    targets = lora_target_modules(tiny_proxyv_model(family=family))
    assert targets and all(t.startswith("model.layers.") for t in targets)
    linear_names = {n.rsplit(".", 1)[-1] for n in targets}
    assert ("qkv_proj" in linear_names) == (family == "phi3")  # Phi-3's fused projections are adapted whole
    trainable = {plain_name(n) for n, p in base.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if is_lora_parameter(n)}
    assert len(lora) == 2 * len(targets)  # A and B of every adapted layer
    assert trainable - lora and all(n.startswith(FULLY_TRAINED) for n in trainable - lora), sorted(trainable - lora)
    assert not any(n.startswith(("model.vision_tower.", "lm_head.", "model.embed_tokens.")) for n in trainable)

    randomise_adapters(peft_model)
    peft_model.train()
    peft_model(**batch(with_labels=True)).loss.backward()
    for name, param in base.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
            continue
        assert param.grad is not None, name
        # (The last layer's full-stream update reaches only vision positions, which carry no labels.)
        if ".lora_B." in name or name.startswith("model.mm_projector."):
            assert bool(param.grad.abs().sum() > 0), name


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("proxyv", [True, False], ids=["proxyv", "baseline"])
def test_merged_adapter_gives_the_adapted_model_logits(family, proxyv):
    """Every projection the forward uses goes through its adapter: merging the adapters into the
    weights changes nothing (a projection that bypassed one, e.g. a sliced fused weight, would)."""
    peft_model = lora_model(family, proxyv)
    inputs = batch()
    with torch.no_grad():
        before = peft_model(**inputs).logits
        randomise_adapters(peft_model)
        adapted = peft_model(**inputs).logits
        merged = peft_model.merge_and_unload()(**inputs).logits
    assert (adapted - before).abs().max() > 1e-2
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_lora_training_lowers_the_loss():
    peft_model = lora_model("qwen2")
    losses = adamw_steps(peft_model, 12, lr=1e-2, **batch(with_labels=True))
    assert losses[-1] < 0.8 * losses[0], losses


def write_lora_folder(peft_model, folder, clip_dir):
    """What `LLaVATrainer.save_model` writes for a LoRA run (adapter, non-LoRA weights, LLaVA config),
    plus the tokenizer and image processor that training saves."""
    base = peft_model.get_base_model()
    save_non_lora_trainables(base, str(folder), should_save=True)
    peft_model.save_pretrained(folder)
    base.config.mm_vision_tower = str(clip_dir)
    base.config.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    # What a QLoRA run's config records (LLaVA's runs write it too); the base it merges onto is not quantized.
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    tiny_word_tokenizer().save_pretrained(folder)


@pytest.fixture(scope="module")
def saved_lora(tmp_path_factory):
    """A trained-looking ProxyV LoRA run on Phi-3 (adapters and projector changed), its full LLaVA
    base checkpoint (a task LoRA's base), and the in-memory model's logits."""
    root = tmp_path_factory.mktemp("lora")
    clip_dir = save_clip_folder(root / "clip")
    model = tiny_proxyv_model(family="phi3", attn_implementation="sdpa")
    model.save_pretrained(root / "base")
    tiny_word_tokenizer().save_pretrained(root / "base")
    peft_model = enable_lora(model, lora_args(), PARTS)
    randomise_adapters(peft_model)
    with torch.no_grad():
        peft_model.get_base_model().model.mm_projector[0].weight.mul_(1.5)  # fully trained weights moved too
        expected = peft_model(**batch()).logits
    write_lora_folder(peft_model, root / "run", clip_dir)
    return SimpleNamespace(root=root, run=root / "run", base=root / "base", logits=expected)


def test_saved_lora_loads_merged_to_the_in_memory_logits(saved_lora):
    tokenizer, model, processor, _ = load_pretrained_model(str(saved_lora.run), str(saved_lora.base), device="cpu")
    assert type(model).__name__ == "LlavaProxyVPhiForCausalLM" and processor is not None
    assert not any(is_lora_parameter(name) for name, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(**batch()).logits, saved_lora.logits, rtol=1e-4, atol=1e-4)


def test_merge_tool_writes_a_full_checkpoint(saved_lora):
    out = saved_lora.root / "merged"
    assert merge_lora.main(["--model-path", str(saved_lora.run), "--model-base", str(saved_lora.base),
                            "--save-model-path", str(out)]) == 0
    _, model, _, _ = load_pretrained_model(str(out), device="cpu")
    assert model.config.proxyv_start_layer == 2 and model.config.model_type == "llava_proxyv_phi"
    with torch.no_grad():
        torch.testing.assert_close(model(**batch()).logits, saved_lora.logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(UsageError, match="not an empty folder"):
        merge_lora.main(["--model-path", str(saved_lora.run), "--model-base", str(saved_lora.base),
                         "--save-model-path", str(out)])
    with pytest.raises(UsageError, match="no adapter_config.json"):
        merge_lora.main(["--model-path", str(saved_lora.base), "--model-base", str(saved_lora.base),
                         "--save-model-path", str(saved_lora.root / "other")])


def test_lora_folder_without_base_names_the_fix(saved_lora):
    with pytest.raises(UsageError, match="LoRA adapter.*--model-base"):
        load_pretrained_model(str(saved_lora.run), device="cpu")


def test_base_of_another_family_or_size_is_refused(saved_lora, tmp_path):
    other_family = tiny_proxyv_model(family="qwen2")
    other_family.save_pretrained(tmp_path / "qwen2")
    tiny_word_tokenizer().save_pretrained(tmp_path / "qwen2")
    with pytest.raises(UsageError, match="'llava_proxyv_qwen' model but the LoRA adapter"):
        load_pretrained_model(str(saved_lora.run), str(tmp_path / "qwen2"), device="cpu")
    wider = tiny_proxyv_model(family="phi3", hidden_size=96)
    wider.save_pretrained(tmp_path / "wide")
    tiny_word_tokenizer().save_pretrained(tmp_path / "wide")
    with pytest.raises(UsageError, match="another size.*hidden_size 96"):
        load_pretrained_model(str(saved_lora.run), str(tmp_path / "wide"), device="cpu")
    more_kv_heads = tiny_proxyv_model(family="phi3", num_key_value_heads=4)
    more_kv_heads.save_pretrained(tmp_path / "kv")
    tiny_word_tokenizer().save_pretrained(tmp_path / "kv")
    with pytest.raises(UsageError, match="another size.*num_key_value_heads 4"):
        load_pretrained_model(str(saved_lora.run), str(tmp_path / "kv"), device="cpu")


def test_adapter_from_another_run_is_a_damaged_folder(saved_lora, tmp_path):
    import shutil

    other = enable_lora(tiny_proxyv_model(family="phi3", intermediate_size=96), lora_args(), PARTS)
    other.save_pretrained(tmp_path / "other")
    mixed = shutil.copytree(saved_lora.run, tmp_path / "run")
    shutil.copy(tmp_path / "other" / "adapter_model.safetensors", mixed / "adapter_model.safetensors")
    with pytest.raises(DamagedInputError, match="does not fit the model its config.json describes.*mixes files"):
        load_pretrained_model(str(mixed), str(saved_lora.base), device="cpu")


def test_lora_folder_missing_its_non_lora_weights(saved_lora, tmp_path):
    import shutil

    broken = shutil.copytree(saved_lora.run, tmp_path / "run")
    (broken / NON_LORA_FILE).unlink()
    with pytest.raises(DamagedInputError, match=f"lacks {NON_LORA_FILE}"):
        load_pretrained_model(str(broken), str(saved_lora.base), device="cpu")


def test_lora_needs_the_language_model_part():
    with pytest.raises(UsageError, match="add mm_language_model"):
        enable_lora(tiny_proxyv_model(), lora_args(), ["mm_mlp_adapter", "mm_vision_mlp"])


def test_targets_skip_the_towers_own_linear_layers():
    model = tiny_proxyv_model()
    tower_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "vision_tower" in n]
    assert tower_linears and not set(tower_linears) & set(lora_target_modules(model))


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal a machine without CUDA gives")


@pytest.mark.parametrize("flags, needle", [
    pytest.param({"bits": 4, "lora_enable": True}, "needs a CUDA GPU with bitsandbytes", marks=NO_CUDA),
    pytest.param({"bits": 8, "lora_enable": True}, "needs a CUDA GPU with bitsandbytes", marks=NO_CUDA),
    ({"bits": 4}, "add --lora_enable True"),
    ({"bits": 6, "lora_enable": True}, "--bits 6 is not one of"),
    ({"lora_bias": "some"}, "--lora_bias 'some' is not one of"),
    ({"lora_r": 0}, "--lora_r must be at least 1"),
    ({"lora_dropout": 1.0}, "--lora_dropout must be in"),
])
def test_bad_lora_flags_are_refused_with_the_fix(tmp_path, flags, needle):
    from llava.train.arguments import TrainingArguments

    with pytest.raises(UsageError, match=re.escape(needle)):
        TrainingArguments(output_dir=str(tmp_path), **flags)
