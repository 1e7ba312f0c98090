"""`python -m llava.eval.prefill_benchmark` end to end on the tiny preset, and its argument checks."""

import json

import pytest
from transformers import LlamaConfig

from llava.eval.prefill_benchmark import format_table, main
from llava.eval.presets import LLM_PRESETS, UNSUPPORTED_PRESETS, load_model_spec, preset_spec
from llava.model import LlavaConfig, LlavaProxyVConfig

ROW_KEYS = ("model", "variant", "proxyv_start_layer", "llm_flops", "flops_reduction", "prefill_time_s",
            "time_reduction", "vision_flops", "projector_flops", "lm_head_flops", "total_flops",
            "prefill_peak_memory_mb", "train_step_time_s", "decode_step_time_s")


def run(tmp_path, *args) -> dict:
    path = tmp_path / "result.json"
    assert main(["--model", "tiny", "--variants", "proxyv", *args, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def check_rows(result: dict, start_layers: list[int]) -> tuple[dict, list[dict]]:
    assert set(result) == {"setting", "rows"}
    rows = result["rows"]
    assert [(r["variant"], r["proxyv_start_layer"]) for r in rows] == \
        [("baseline", None)] + [("proxyv", s) for s in start_layers]
    for row in rows:
        assert all(key in row for key in ROW_KEYS)
        assert row["total_flops"] == row["vision_flops"] + row["projector_flops"] + row["llm_flops"] + \
            row["lm_head_flops"]
        assert row["llm_flops"] == row["llm_flops_analytic"]
    baseline, proxyv = rows[0], rows[1:]
    assert baseline["flops_reduction"] == 0 and baseline["total_flops_reduction"] == 0
    assert all(row["flops_reduction"] > 0 for row in proxyv)
    return baseline, proxyv


def test_meta_run_counts_flops_only(tmp_path, capsys):
    result = run(tmp_path, "--device", "meta", "--proxyv-start-layers", "1,3")
    baseline, proxyv = check_rows(result, [1, 3])
    assert proxyv[0]["flops_reduction"] > proxyv[1]["flops_reduction"]  # earlier start, more saved
    assert all(row[key] is None for row in result["rows"]
               for key in ("prefill_time_s", "time_reduction", "train_step_time_s", "decode_step_time_s"))
    setting = result["setting"]
    assert setting["device"] == "meta" and setting["crops"] == 5 and setting["text_tokens"] == 50
    assert setting["sequence_length"] == 50 + 5 * 577
    assert "logits_to_keep=1" in setting["lm_head"]
    assert "| baseline |" in capsys.readouterr().out


@pytest.mark.parametrize("interleave", [False, True])
def test_cpu_run_times_every_variant(tmp_path, interleave):
    result = run(tmp_path, "--device", "cpu", "--proxyv-start-layers", "2", "--crops", "2", "--text-tokens", "10",
                 "--repeats", "1", "--warmup", "0", *(["--interleave"] if interleave else []))
    baseline, (proxyv,) = check_rows(result, [2])
    for row in (baseline, proxyv):
        assert row["prefill_time_s"] > 0 and row["train_step_time_s"] > 0 and row["decode_step_time_s"] > 0
        assert row["prefill_peak_memory_mb"] is not None and row["train_peak_memory_mb"] is not None
        assert row["sequence_length"] == 10 + 2 * 577
        assert row["weights_mb"] > 0 and row["load_average_1min"] is not None
    assert baseline["time_reduction"] == 0
    assert isinstance(proxyv["time_reduction"], float)
    assert result["setting"]["memory"] and result["setting"]["interleave"] is interleave


def test_learned_proxies_and_reduced_depth(tmp_path):
    result = run(tmp_path, "--learn-proxy", "--layers", "2", "--proxyv-start-layers", "0,1")
    check_rows(result, [0, 1])
    assert all(row["num_layers"] == 2 for row in result["rows"])


@pytest.mark.parametrize("name", list(UNSUPPORTED_PRESETS))
def test_unsupported_preset_is_a_clear_error(name, capsys):
    assert main(["--model", name]) == 2
    assert "not yet supported (the model code supports Llama-architecture LLMs only)" in capsys.readouterr().err


def test_unsupported_config_file_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 3584}))
    with pytest.raises(ValueError, match="not yet supported"):
        load_model_spec(str(tmp_path))


def test_start_layer_deeper_than_layers_is_rejected(capsys):
    assert main(["--model", "tiny", "--layers", "2", "--proxyv-start-layers", "1,3"]) == 2
    error = capsys.readouterr().err
    assert "[3]" in error and "--layers 2" in error


def test_unknown_model_and_flash_off_cuda_are_rejected(capsys):
    assert main(["--model", "no-such-model"]) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert main(["--model", "tiny", "--variants", "proxyv,no-such-variant"]) == 2
    assert "Unknown variant(s) ['no-such-variant']" in capsys.readouterr().err
    assert main(["--model", "tiny", "--attn-implementation", "flash_attention_2"]) == 2
    assert "needs --device cuda" in capsys.readouterr().err


def test_presets_have_the_real_shapes():
    vicuna7, vicuna13, llama3 = (preset_spec(n).llava_values for n in ("vicuna-7b", "vicuna-13b", "llama3-8b"))
    assert (vicuna7["hidden_size"], vicuna7["intermediate_size"], vicuna7["num_hidden_layers"],
            vicuna7["num_attention_heads"], vicuna7["num_key_value_heads"], vicuna7["vocab_size"]) == \
        (4096, 11008, 32, 32, 32, 32000)
    assert (vicuna13["hidden_size"], vicuna13["intermediate_size"], vicuna13["num_hidden_layers"],
            vicuna13["num_attention_heads"]) == (5120, 13824, 40, 40)
    assert (llama3["intermediate_size"], llama3["num_key_value_heads"], llama3["vocab_size"],
            llama3["rope_parameters"]["rope_theta"]) == (14336, 8, 128256, 500000.0)
    for values in (vicuna7, vicuna13, llama3):
        tower = values["mm_vision_tower_config"]
        assert (tower["hidden_size"], tower["num_hidden_layers"], tower["image_size"], tower["patch_size"]) == \
            (1024, 24, 336, 14)
        assert values["mm_projector_type"] == "mlp2x_gelu" and values["mm_vision_select_layer"] == -2
    assert set(LLM_PRESETS) >= {"vicuna-7b", "vicuna-13b", "llama3-8b", "tiny"}


def test_config_paths_load(tmp_path):
    """A saved ProxyV config, the authors' style (`proxyv` key), and a plain Llama config.json."""
    tiny = preset_spec("tiny").llava_values
    LlavaProxyVConfig(**tiny, proxyv_start_layer=1).save_pretrained(tmp_path / "ours")
    spec = load_model_spec(str(tmp_path / "ours"))
    assert spec.llava_values["hidden_size"] == 64 and "proxyv_start_layer" not in spec.llava_values
    authors = LlavaConfig(**tiny, proxyv=True).to_dict()
    del authors["image_newline_positions"]
    (tmp_path / "authors.json").write_text(json.dumps(authors))
    assert load_model_spec(str(tmp_path / "authors.json")).llava_values["image_newline_positions"] == "release"
    LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=100).save_pretrained(tmp_path / "llama")
    spec = load_model_spec(str(tmp_path / "llama" / "config.json"))
    assert spec.num_layers == 2 and spec.tokens_per_crop == 576


def test_table_shows_missing_values_as_dashes():
    row = {"model": "m", "variant": "baseline", "proxyv_start_layer": None, "llm_flops": 1e12, "flops_reduction": 0.0,
           "vision_flops": 1e12, "projector_flops": 1e11, "lm_head_flops": 1e9, "total_flops": 2.1e12,
           "total_flops_reduction": 0.0, "prefill_time_s": None}
    table = format_table({"setting": {}, "rows": [row]})
    assert "| m | baseline | - | 1.000 | 0.0% |" in table and "prefill s" not in table
