"""`llava.eval.lora_budget`: counts of a meta-built model against the formula r * (in + out) per adapted layer."""

import json

from llava.eval.lora_budget import main
from llava.eval.presets import load_model_spec


def test_lora_counts_follow_the_adapted_layers_shapes(tmp_path, capsys):
    out = tmp_path / "budget.json"
    assert main(["--model", "tiny-phi3", "--proxyv-start-layer", "2", "--lora-r", "4", "--json", str(out)]) == 0
    assert "LoRA r=4" in capsys.readouterr().out
    full, lora = json.loads(out.read_text())["rows"]
    values = load_model_spec("tiny-phi3").llava_values
    hidden, inner, layers = values["hidden_size"], values["intermediate_size"], values["num_hidden_layers"]
    head_dim = hidden // values["num_attention_heads"]
    qkv = hidden + 2 * values["num_key_value_heads"] * head_dim
    # Phi-3 per layer: qkv_proj (hidden -> qkv), o_proj, gate_up_proj (hidden -> 2 inner), down_proj.
    per_layer = 4 * ((hidden + qkv) + 2 * hidden + (hidden + 2 * inner) + (inner + hidden))
    assert lora["lora"] == layers * per_layer
    assert lora["total"] == full["total"] + lora["lora"]  # the adapters come on top of the same model
    assert full["lora"] == 0 and full["trained_fully"] == full["trained"]
    # With LoRA only the projector and ProxyV modules train fully, not the language model.
    assert 0 < lora["trained_fully"] < full["trained"] and lora["trained"] == lora["lora"] + lora["trained_fully"]
