"""`python -m llava.eval.prefill_benchmark` end to end on the tiny presets, its argument checks, the
presets' shapes and families, and the config files it reads."""

import json

import pytest
from transformers import LlamaConfig

from llava.errors import run_main
from llava.eval.prefill_benchmark import build_variants, format_table, main
from llava.eval.presets import LLM_PRESETS, TINY_PRESETS, load_model_spec, preset_spec
from llava.model import FAMILIES, LlavaConfig, LlavaProxyVConfig
from llava.tiny.models import tiny_llm_config
from tests.model_fixtures import tiny_wordlevel_tokenizer

TINY_CROP_ROWS = 37  # the tiny CLIP's 6 x 6 patches per crop, plus the crop's image-newline row

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
    assert setting["sequence_length"] == 50 + 5 * TINY_CROP_ROWS
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
        assert row["sequence_length"] == 10 + 2 * TINY_CROP_ROWS
        assert row["weights_mb"] > 0 and row["load_average_1min"] is not None
    assert baseline["time_reduction"] == 0
    assert isinstance(proxyv["time_reduction"], float)
    assert result["setting"]["memory"] and result["setting"]["interleave"] is interleave


def test_learned_proxies_and_reduced_depth(tmp_path):
    result = run(tmp_path, "--learn-proxy", "--layers", "2", "--proxyv-start-layers", "0,1")
    check_rows(result, [0, 1])
    assert all(row["num_layers"] == 2 for row in result["rows"])


def test_every_family_runs_end_to_end(tmp_path):
    """The tiny preset of every family at the paper's start layers (3L/8 and L/2 of 4 layers: 1, 2); the
    other rows of every family: tests/eval/test_flops.py."""
    path = tmp_path / "result.json"
    names = ",".join(TINY_PRESETS)
    assert main(["--model", names, "--variants", "proxyv", "--proxyv-start-layers", "paper", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {row["model"] for row in rows} == set(TINY_PRESETS)
    for name in TINY_PRESETS:
        model_rows = [row for row in rows if row["model"] == name]
        assert [row["proxyv_start_layer"] for row in model_rows if row["variant"] == "proxyv"] == [1, 2]
        assert len(model_rows) == 3 and all(row["llm_flops"] == row["llm_flops_analytic"] for row in model_rows)


def test_other_model_types_are_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma", "hidden_size": 3072}))
    with pytest.raises(ValueError, match="model_type 'gemma' is not supported.*llama, mistral, qwen2, qwen3, phi3"):
        load_model_spec(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internlm2", "hidden_size": 4096}))
    with pytest.raises(ValueError, match="python -m llava.tools.convert_internlm2"):
        load_model_spec(str(tmp_path))


def test_start_layer_deeper_than_layers_is_rejected(capsys):
    assert run_main(main, ["--model", "tiny", "--layers", "2", "--proxyv-start-layers", "1,3"]) == 2
    error = capsys.readouterr().err
    assert "[3]" in error and "--layers 2" in error


@pytest.mark.parametrize(("argv", "culprit"), [
    (["--model", "no-such-model"], "neither a preset"),
    (["--model", "tiny", "--variants", "proxyv,no-such-variant"], "Unknown variant(s) ['no-such-variant']"),
    (["--model", "tiny", "--attn-implementation", "flash_attention_2"], "needs --device cuda"),
    (["--model", "tiny", "--device", "cpu", "--attn-implementation", "flex_attention"], "timed on CUDA"),
    (["--model", "tiny", "--json", "."], "--json . is a folder"),
    (["--model", "tiny", "--json", "no/such/folder/out.json"], "does not exist"),
], ids=["unknown-model", "unknown-variant", "flash-on-cpu", "flex-on-cpu", "json-is-a-folder", "json-folder-missing"])
def test_bad_options_are_one_usage_line(argv, culprit, capsys):
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and culprit in err and "Traceback" not in err, err


# name: (family, hidden, intermediate, layers, heads, kv heads, head_dim, vocab, tied, rope theta, eps, max positions)
REAL_SHAPES = {
    "vicuna-7b": ("llama", 4096, 11008, 32, 32, 32, 128, 32000, False, 1e4, 1e-5, 4096),
    "vicuna-13b": ("llama", 5120, 13824, 40, 40, 40, 128, 32000, False, 1e4, 1e-5, 4096),
    "llama3-8b": ("llama", 4096, 14336, 32, 32, 8, 128, 128256, False, 5e5, 1e-5, 8192),
    "qwen2-7b": ("qwen2", 3584, 18944, 28, 28, 4, 128, 152064, False, 1e6, 1e-6, 32768),
    "phi3-mini": ("phi3", 3072, 8192, 32, 32, 32, 96, 32064, False, 1e4, 1e-5, 4096),
    "internlm2.5-7b": ("llama", 4096, 14336, 32, 32, 8, 128, 92544, False, 1e6, 1e-5, 32768),
    "qwen2.5-7b": ("qwen2", 3584, 18944, 28, 28, 4, 128, 152064, False, 1e6, 1e-6, 32768),
    "qwen3-8b": ("qwen3", 4096, 12288, 36, 32, 8, 128, 151936, False, 1e6, 1e-6, 40960),
}


@pytest.mark.parametrize("name", list(REAL_SHAPES))
def test_presets_have_the_real_shapes(name):
    """The shapes as the family's own config reads them, with the CLIP-L/336 tower and mlp2x_gelu."""
    spec = preset_spec(name)
    family, *shape = REAL_SHAPES[name]
    baseline, *proxyv = build_variants(spec, "paper")
    config = baseline.config
    assert spec.family == family and type(config) is FAMILIES[family].config
    assert baseline.model_class is FAMILIES[family].causal_lm and proxyv[0].model_class is FAMILIES[family].proxyv_causal_lm
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert [config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, head_dim, config.vocab_size, config.tie_word_embeddings,
            config.rope_parameters["rope_theta"], config.rms_norm_eps, config.max_position_embeddings] == shape
    tower = spec.llava_values["mm_vision_tower_config"]
    assert (tower["hidden_size"], tower["num_hidden_layers"], tower["image_size"], tower["patch_size"]) == \
        (1024, 24, 336, 14)
    assert config.mm_projector_type == "mlp2x_gelu" and config.mm_vision_select_layer == -2
    depth = shape[2]
    assert [v.start_layer for v in proxyv] == sorted({3 * depth // 8, depth // 2})
    assert set(LLM_PRESETS) == set(REAL_SHAPES)


def test_paper_start_layers_per_backbone():
    expected = {"vicuna-7b": [12, 16], "vicuna-13b": [15, 20], "qwen2-7b": [10, 14], "qwen3-8b": [13, 18]}
    for name, layers in expected.items():
        assert [v.start_layer for v in build_variants(preset_spec(name), "paper")[1:]] == layers
    assert [v.start_layer for v in build_variants(preset_spec("vicuna-7b"), "paper", layers=8)[1:]] == [3, 4]


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
    assert spec.num_layers == 2 and spec.tokens_per_crop == 576 and spec.family == "llama"
    # A checkpoint saved with a token reduction: the baseline row is the plain model, the rows set their own.
    LlavaConfig(**tiny, pyramid_drop_layers=[2]).save_pretrained(tmp_path / "pdrop")
    rows = {v.name: v.config for v in build_variants(load_model_spec(str(tmp_path / "pdrop")), [2], None, False,
                                                     ("pyramiddrop", "visionzip"))}
    assert rows["baseline"].pyramid_drop_layers is None and rows["pyramiddrop"].pyramid_drop_layers == [2, 3]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_paths_of_every_family_load(tmp_path, family):
    """A plain LLM config.json of the family, its LLaVA baseline and ProxyV saves and an authors'-style
    LLaVA config (baseline model_type + `proxyv`): each gives a spec of that family that builds and cuts."""
    classes = FAMILIES[family]
    tiny_llm_config(tiny_wordlevel_tokenizer(), family).save_pretrained(tmp_path / "llm")
    spec = load_model_spec(str(tmp_path / "llm"))
    assert spec.family == family and spec.num_layers == 4
    tower = {k: v for k, v in preset_spec("vicuna-7b").llava_values.items() if k.startswith("mm_")}  # 24x24, r = 4
    llava_values = {k: v for k, v in spec.llava_values.items() if not k.startswith("mm_")} | tower
    classes.config(**llava_values).save_pretrained(tmp_path / "baseline")
    classes.proxyv_config(**llava_values, proxyv_start_layer=1).save_pretrained(tmp_path / "proxyv")
    authors = classes.config(**llava_values, proxyv=True).to_dict()
    (tmp_path / "authors.json").write_text(json.dumps(authors))
    for path in ("baseline", "proxyv", "authors.json"):
        loaded = load_model_spec(str(tmp_path / path))
        assert loaded.family == family and loaded.num_layers == 4, path
        variants = build_variants(loaded, [1], layers=2)  # cut: per-layer lists (Qwen's layer_types) follow
        assert [type(v.config) for v in variants] == [classes.config, classes.proxyv_config], path
        assert all(v.config.num_hidden_layers == 2 for v in variants)
    # The authors' config keeps their family's guided update for learned proxies (Phi-3: a spatial copy);
    # VisionZip + ProxyV needs the learned assignment and uses it.
    authors_spec = load_model_spec(str(tmp_path / "authors.json"))
    release = classes.proxyv_config.release_learned_proxy_guidance
    assert authors_spec.proxyv_options["learned_proxy_guidance"] == release
    rows = {v.name: v for v in build_variants(authors_spec, [1], None, True, ("proxyv", "visionzip+proxyv"))}
    assert rows["proxyv"].config.learned_proxy_guidance == release
    assert rows["visionzip+proxyv"].config.learned_proxy_guidance == "assignment"


def test_table_shows_missing_values_as_dashes():
    row = {"model": "m", "variant": "baseline", "proxyv_start_layer": None, "llm_flops": 1e12, "flops_reduction": 0.0,
           "vision_flops": 1e12, "projector_flops": 1e11, "lm_head_flops": 1e9, "total_flops": 2.1e12,
           "total_flops_reduction": 0.0, "prefill_time_s": None}
    table = format_table({"setting": {}, "rows": [row]})
    assert "| m | baseline | - | 1.000 | 0.0% |" in table and "prefill s" not in table
