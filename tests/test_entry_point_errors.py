"""Every entry point against bad input: its `main()` run in-process under `llava.errors.run_main`, as
`python -m ...` runs it, must end with a non-zero status (2: a bad option or path, 1: a file or input
that cannot be used), exactly one `error: ...` line on stderr naming the culprit, and no traceback.

Covered: `llava.eval.run_llava`, `llava.serve.cli`, `llava.train.check_data`, `llava/train/train.py`
(`train(argv)`, which fails before the model is built for each case here), `llava.tiny`,
`llava.conversation`, `llava.tools.convert_internlm2`, `llava.tools.merge_lora`,
`llava.eval.lora_budget` and `llava.eval.model_vqa`.
"""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest
import torch

from llava.conversation import main as conversation_main
from llava.errors import DEBUG_ENV, UsageError, run_main
from llava.eval.lora_budget import main as lora_budget_main
from llava.eval.model_vqa import main as model_vqa_main
from llava.eval.run_llava import main as run_llava_main
from llava.serve.cli import main as chat_main
from llava.tiny.__main__ import main as tiny_main
from llava.tools.convert_internlm2 import main as convert_main
from llava.tools.merge_lora import main as merge_lora_main
from llava.train.check_data import main as check_data_main
from llava.train.train import train

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
INVALID_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")  # how Python hands such bytes in argv / a pipe


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def fails(capsys, status: int, main, argv: list[str], *needles: str, stdin=None, monkeypatch=None,
          debug_option: str | None = "--debug") -> str:
    """Run `main(argv)` under run_main; assert `status`, one `error:` line holding `needles`, no traceback."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", stdin)
    code = run_main(main, [str(arg) for arg in argv], debug_option=debug_option)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == status, err
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad inputs shared by the cases: files of the wrong kind and damaged content."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "folder").mkdir()
    (root / "plain.txt").write_text("just some text\n")
    (root / "empty.json").write_text("[]")
    (root / "empty.jsonl").write_text("")
    (root / "object.json").write_text('{"id": "a", "conversations": []}')
    (root / "broken.json").write_text('{"train_batch_size": 1,\n  "zero_optimization": \n')
    (root / "list.json").write_text("[1, 2]")
    return root


@pytest.fixture(scope="module")
def damaged(tiny_assets, tmp_path_factory):
    """Copies of the tiny LLM and LLaVA checkpoints with one file damaged each."""
    root = tmp_path_factory.mktemp("damaged")
    made = {}
    for name, source in (("llm_config", tiny_assets.llm), ("llm_weights", tiny_assets.llm),
                         ("llava_config", tiny_assets.llava), ("llava_weights", tiny_assets.llava)):
        folder = root / name
        shutil.copytree(source, folder)
        if name.endswith("config"):
            (folder / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": 32,,\n}')
        else:
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        made[name] = folder
    return made


# ----------------------------------------------------------------------------- run_llava


@pytest.fixture(scope="module")
def ask(tiny_assets):
    """run_llava's arguments for the tiny ProxyV model and a bundled image, then the case's own."""
    def args(*extra):
        return ["--model-path", tiny_assets.llava_proxyv, "--image-file", tiny_assets.example_image(), *extra]
    return args


@pytest.mark.parametrize(("extra", "needles"), [
    (["--num_beams", "0"], ["--num_beams", "at least 1"]),
    (["--device", "tpu"], ["--device", "'tpu'", "cuda:N"]),
    (["--temperature", "-1"], ["--temperature", ">= 0"]),
    (["--temperature", "nan"], ["--temperature"]),
    (["--top_p", "1.5"], ["--top_p", "(0, 1]"]),
    (["--top_p", "0"], ["--top_p"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["--conv-mode", "nope"], ["--conv-mode", "'nope'", "vicuna_v1"]),
    (["--query", "   "], ["--query is empty"]),
], ids=["beams-0", "device-tpu", "temperature-negative", "temperature-nan", "top_p-over-1", "top_p-0",
        "no-new-tokens", "unknown-template", "empty-query"])
def test_run_llava_bad_option_values(extra, needles, ask, capsys):
    fails(capsys, 2, run_llava_main, ask(*extra), *needles)


@NO_CUDA
def test_run_llava_cuda_without_cuda(ask, capsys):
    fails(capsys, 2, run_llava_main, ask("--device", "cuda:1"), "--device cuda:1", "CUDA is not available")


def test_run_llava_query_that_is_not_utf8(ask, capsys):
    fails(capsys, 1, run_llava_main, ask("--query", f"what {INVALID_UTF8}?"), "--query", "UTF-8")


def test_run_llava_prompt_three_times_the_context(ask, capsys):
    """The tiny model's context is 4096 tokens; the prompt alone is three times that."""
    line = fails(capsys, 2, run_llava_main, ask("--query", "red " * 12300), "context of 4096 tokens",
                 "Shorten --query")
    assert "--max-new-tokens 64" in line


def test_run_llava_reply_longer_than_the_context(ask, capsys):
    fails(capsys, 2, run_llava_main, ask("--max-new-tokens", "5000"), "--max-new-tokens 5000", "context of 4096")


def test_run_llava_model_path_without_image(tiny_assets, capsys):
    fails(capsys, 2, run_llava_main, ["--model-path", tiny_assets.llava], "--image-file is required")


@pytest.mark.parametrize("case", ["missing", "folder", "not-an-image", "empty-entry"])
def test_run_llava_bad_image_file(case, tiny_assets, files, capsys):
    path, status, needle = {
        "missing": (files / "nowhere.png", 2, files / "nowhere.png"),
        "folder": (files / "folder", 2, "is a folder"),
        "not-an-image": (files / "plain.txt", 1, files / "plain.txt"),
        "empty-entry": (f"{tiny_assets.example_image()},,", 2, "empty entry"),
    }[case]
    fails(capsys, status, run_llava_main, ["--model-path", tiny_assets.llava, "--image-file", path], "--image-file",
          needle)


@pytest.mark.parametrize(("case", "status", "needle"), [
    ("missing", 2, "does not exist"), ("file", 2, "is a file"), ("plain-llm", 2, "model_type 'llama'"),
    ("llava_config", 1, "config.json"), ("llava_weights", 1, "model.safetensors")])
def test_run_llava_bad_model_path(case, status, needle, tiny_assets, damaged, files, capsys):
    path = {"missing": files / "no_model", "file": files / "plain.txt", "plain-llm": tiny_assets.llm}.get(case)
    path = path or damaged[case]
    fails(capsys, status, run_llava_main, ["--model-path", path, "--image-file", tiny_assets.example_image()],
          path, needle)


def test_run_llava_missing_model_base(ask, files, capsys):
    fails(capsys, 2, run_llava_main, ask("--model-base", files / "no_base"), files / "no_base")


def test_run_llava_debug_shows_the_exception(ask):
    with pytest.raises(UsageError, match="--num_beams"):
        run_main(run_llava_main, [str(arg) for arg in ask("--num_beams", "0", "--debug")])


# ----------------------------------------------------------------------------- chat CLI


def chat_args(tiny_assets, *extra):
    return ["--model-path", tiny_assets.llava_proxyv, "--temperature", "0", "--max-new-tokens", "4", *extra]


def test_chat_stdin_that_is_not_utf8_strict_decoder(tiny_assets, monkeypatch, capsys):
    stdin = io.TextIOWrapper(io.BytesIO(b"hello \xff\xfe there\n"), encoding="utf-8")
    fails(capsys, 1, chat_main, chat_args(tiny_assets), "standard input line 1", "not valid UTF-8", stdin=stdin,
          monkeypatch=monkeypatch)


def test_chat_stdin_that_is_not_utf8_surrogateescape(tiny_assets, monkeypatch, capsys):
    """A second line that is not UTF-8, decoded as a pipe in the C locale does (lone surrogates)."""
    stdin = io.StringIO(f"Hello\nhello {INVALID_UTF8} there\n")
    fails(capsys, 1, chat_main, chat_args(tiny_assets), "standard input line 2", "UTF-8", stdin=stdin,
          monkeypatch=monkeypatch)


def test_chat_message_longer_than_the_context(tiny_assets, monkeypatch, capsys):
    fails(capsys, 2, chat_main, chat_args(tiny_assets), "context of 4096 tokens", "shorter message",
          stdin=io.StringIO("blue " * 12300 + "\n"), monkeypatch=monkeypatch)


@pytest.mark.parametrize(("extra", "needles"), [
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--temperature", "inf"], ["--temperature"]),
    (["--max-new-tokens", "-3"], ["--max-new-tokens"]),
    (["--load-8bit", "--load-4bit"], ["--load-8bit", "--load-4bit"]),
    (["--conv-mode", "vicuna"], ["--conv-mode", "'vicuna'"]),
    (["--max-new-tokens", "9000"], ["--max-new-tokens 9000", "context of 4096"]),
], ids=["device-tpu", "temperature-inf", "negative-new-tokens", "8-and-4-bit", "unknown-template", "reply-too-long"])
def test_chat_bad_options(extra, needles, tiny_assets, monkeypatch, capsys):
    fails(capsys, 2, chat_main, chat_args(tiny_assets, *extra), *needles, stdin=io.StringIO("hi\n"),
          monkeypatch=monkeypatch)


def test_chat_image_folder_and_model_file(tiny_assets, files, monkeypatch, capsys):
    fails(capsys, 2, chat_main, chat_args(tiny_assets, "--image-file", files / "folder"), "--image-file", "is a folder",
          stdin=io.StringIO("hi\n"), monkeypatch=monkeypatch)
    fails(capsys, 2, chat_main, ["--model-path", files / "plain.txt"], files / "plain.txt", "is a file",
          stdin=io.StringIO("hi\n"), monkeypatch=monkeypatch)


# ----------------------------------------------------------------------------- check_data


def test_check_data_empty_list_is_nothing_to_train_on(files, capsys):
    fails(capsys, 1, check_data_main, ["--data_path", files / "empty.json"], "holds no records", "nothing to train on")
    fails(capsys, 1, check_data_main, ["--data_path", f"{files / 'empty.json'},{files / 'empty.jsonl'}"],
          "nothing to train on")


def test_check_data_unknown_version_is_one_bad_option(tiny_assets, capsys):
    """Reported as the option, before any record is read (no report on stdout)."""
    code = run_main(check_data_main, ["--data_path", str(tiny_assets.instruct), "--image_folder", str(tiny_assets.data),
                                      "--model_name_or_path", str(tiny_assets.llm), "--version", "vicuna"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.splitlines() == [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert "--version 'vicuna' is not a conversation template" in captured.err


@pytest.mark.parametrize(("case", "status", "needles"), [
    ("data-missing", 2, ["--data_path", "nowhere.json", "does not exist"]),
    ("data-folder", 2, ["--data_path", "is a folder"]),
    ("data-blank", 2, ["--data_path", "names no file"]),
    ("data-object", 1, ["object.json", "not a list of records"]),
    ("image-folder-file", 2, ["--image_folder", "is not a folder"]),
    ("pinpoints", 2, ["--image_grid_pinpoints", "[[336,672],[672,336]", "(1x1),...,(3x3)"]),
    ("pinpoints-range", 2, ["--image_grid_pinpoints", "names no grid"]),
    ("bad-fraction", 2, ["--max_bad_sample_fraction", "[0, 1]"]),
    ("max-length", 2, ["--model_max_length"]),
    ("report-folder", 2, ["--report_json", "is a folder"]),
    ("report-no-parent", 2, ["--report_json", "does not exist"]),
    ("model-missing", 2, ["--model_name_or_path", "does not exist"]),
    ("model-no-config", 2, ["--model_name_or_path", "has no config.json"]),
])
def test_check_data_bad_options(case, status, needles, tiny_assets, files, capsys):
    data = ["--data_path", tiny_assets.captions]
    argv = {
        "data-missing": ["--data_path", files / "nowhere.json"],
        "data-folder": ["--data_path", files / "folder"],
        "data-blank": ["--data_path", " , "],
        "data-object": ["--data_path", files / "object.json"],
        "image-folder-file": [*data, "--image_folder", files / "plain.txt"],
        "pinpoints": [*data, "--image_grid_pinpoints", "[[336,672],[672"],
        "pinpoints-range": [*data, "--image_grid_pinpoints", "(3x3),...,(1x1)"],
        "bad-fraction": [*data, "--max_bad_sample_fraction", "1.5"],
        "max-length": [*data, "--model_max_length", "0"],
        "report-folder": [*data, "--report_json", files / "folder"],
        "report-no-parent": [*data, "--report_json", files / "no_dir" / "report.json"],
        "model-missing": [*data, "--model_name_or_path", files / "no_model"],
        "model-no-config": [*data, "--model_name_or_path", files / "folder"],
    }[case]
    fails(capsys, status, check_data_main, argv, *needles)


# ----------------------------------------------------------------------------- train.py


@pytest.fixture(scope="module")
def train_args(tiny_assets, tmp_path_factory):
    """train.py's arguments for a tiny stage-1 run, with flags replaced or added by the case."""
    out = tmp_path_factory.mktemp("train_out")

    def args(**changes):
        flags = {"model_name_or_path": tiny_assets.llm, "vision_tower": tiny_assets.clip,
                 "data_path": tiny_assets.captions, "image_folder": tiny_assets.data, "version": "plain",
                 "output_dir": out / "run", "report_to": "none", "max_steps": 1, "save_strategy": "no", **changes}
        return [part for key, value in flags.items() if value is not None for part in (f"--{key}", str(value))]
    return args


@pytest.mark.parametrize(("changes", "status", "needles"), [
    ({"data_path": "EMPTY"}, 1, ["empty.json", "nothing to train on"]),
    ({"version": "vicuna"}, 2, ["--version 'vicuna'", "vicuna_v1"]),
    ({"pretrain_mm_mlp_adapter": "MISSING"}, 2, ["--pretrain_mm_mlp_adapter", "does not exist"]),
    ({"pretrain_mm_mlp_adapter": "TEXT"}, 1, ["--pretrain_mm_mlp_adapter", "plain.txt", "not a readable torch"]),
    ({"deepspeed": "MISSING"}, 2, ["--deepspeed", "does not exist"]),
    ({"deepspeed": "BROKEN"}, 1, ["--deepspeed", "broken.json", "line 3"]),
    ({"deepspeed": "LIST"}, 1, ["--deepspeed", "not an object"]),
    ({"image_grid_pinpoints": "[[336,672],[672,336"}, 2, ["--image_grid_pinpoints", "[[336,672],[672,336]"]),
    ({"image_grid_pinpoints": "(1x1),...,(3x3"}, 2, ["--image_grid_pinpoints", "(1x1),...,(3x3)"]),
    ({"output_dir": "TEXT"}, 2, ["--output_dir", "is a file"]),
    ({"data_path": "MISSING"}, 2, ["--data_path", "does not exist"]),
    ({"image_folder": "TEXT"}, 2, ["--image_folder", "is not a folder"]),
    ({"image_folder": "MISSING"}, 2, ["--image_folder", "does not exist"]),
    ({"mm_tunable_parts": "mm_projector"}, 2, ["--mm_tunable_parts", "mm_mlp_adapter"]),
    ({"mm_projector_type": "mlp0x_gelu"}, 2, ["--mm_projector_type", "mlp2x_gelu"]),
    ({"image_aspect_ratio": "wide"}, 2, ["--image_aspect_ratio", "anyres"]),
    ({"resume_from_checkpoint": "MISSING"}, 2, ["--resume_from_checkpoint"]),
    ({"model_max_length": "0"}, 2, ["--model_max_length"]),
    ({"max_bad_sample_fraction": "2"}, 2, ["--max_bad_sample_fraction"]),
    ({"model_name_or_path": "TEXT"}, 2, ["--model_name_or_path", "is a file"]),
    ({"model_name_or_path": "llm_config"}, 1, ["config.json", "line 2"]),
    ({"model_name_or_path": "llm_weights"}, 1, ["model.safetensors", "cut short"]),
    ({"bogus_flag": "1"}, 2, ["unknown arguments", "--bogus_flag"]),
    ({"proxyv": "False", "proxyv_start_layer": "1"}, 2, ["--proxyv False contradicts --proxyv_start_layer"]),
    ({"per_device_train_batch_size": "0"}, 2, ["--per_device_train_batch_size", "at least 1"]),
    ({"learning_rate": "-1"}, 2, ["--learning_rate", ">= 0"]),
    ({"vision_tower": "LLM"}, 2, ["--vision_tower", "'llama'", "not a CLIP vision tower"]),
], ids=["empty-data", "unknown-version", "adapter-missing", "adapter-not-torch", "deepspeed-missing",
        "deepspeed-not-json", "deepspeed-not-object", "pinpoints-list", "pinpoints-range", "output-dir-file",
        "data-missing", "image-folder-file", "image-folder-missing", "tunable-parts", "projector-type",
        "aspect-ratio", "resume-missing", "max-length", "bad-fraction", "model-file", "model-config-damaged",
        "model-weights-cut", "unknown-flag", "proxyv-contradiction", "batch-size-0", "negative-lr",
        "tower-not-clip"])
def test_train_fails_before_building_the_model(changes, status, needles, train_args, files, damaged, tiny_assets,
                                              capsys):
    stand_ins = {"EMPTY": files / "empty.json", "MISSING": files / "nowhere", "TEXT": files / "plain.txt",
                 "BROKEN": files / "broken.json", "LIST": files / "list.json", "LLM": tiny_assets.llm, **damaged}
    argv = train_args(**{key: stand_ins.get(value, value) for key, value in changes.items()})
    fails(capsys, status, train, argv, *needles, debug_option=None)


def test_train_debug_is_transformers_and_llava_debug_shows_the_exception(train_args, files, monkeypatch, capsys):
    argv = train_args(version="nope", debug="underflow_overflow")
    fails(capsys, 2, train, argv, "--version 'nope'", debug_option=None)
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UsageError, match="--version 'nope'"):
        run_main(train, argv, debug_option=None)


# ----------------------------------------------------------------------------- llava.tiny


@pytest.mark.parametrize(("argv", "needles"), [
    (["--out", "FILE"], ["--out", "is a file"]),
    (["--out", "UNDER_FILE"], ["--out", "is a file, so the folder cannot be created"]),
    (["--seed", "-1"], ["--seed"]),
    (["--llm-text-steps", "-5"], ["--llm-text-steps", ">= 0"]),
    (["--clip-pretrain-steps", "-1"], ["--clip-pretrain-steps", ">= 0"]),
    (["--num-scenes", "3"], ["--num-scenes", ">= 8"]),
], ids=["out-is-file", "out-under-file", "negative-seed", "negative-steps", "negative-clip-steps", "few-scenes"])
def test_tiny_bad_options(argv, needles, files, capsys):
    stand_ins = {"FILE": files / "plain.txt", "UNDER_FILE": files / "plain.txt" / "tiny"}
    fails(capsys, 2, tiny_main, [stand_ins.get(arg, arg) for arg in argv], *needles)


# ----------------------------------------------------------------------------- llava.conversation


@pytest.mark.parametrize(("case", "status", "needles"), [
    ("missing", 2, ["--model", "no_model"]),
    ("file", 2, ["--model", "is a file"]),
    ("folder", 2, ["--model", "has no config.json"]),
    ("llm_config", 1, ["--model", "config.json"]),
])
def test_conversation_bad_model(case, status, needles, files, damaged, capsys):
    path = {"missing": files / "no_model", "file": files / "plain.txt", "folder": files / "folder"}.get(case)
    fails(capsys, status, conversation_main, ["--model", path or damaged[case]], *needles)


# ----------------------------------------------------------------------------- convert_internlm2


def test_converter_bad_paths_and_checkpoints(files, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    fails(capsys, 2, convert_main, ["--src", files / "nowhere", "--dst", tmp_path / "dst"], "--src", "not a folder")
    fails(capsys, 2, convert_main, ["--src", src, "--dst", files / "plain.txt"], "--dst", "is a file")
    fails(capsys, 2, convert_main, ["--src", src, "--dst", files / "plain.txt" / "out"], "--dst", "cannot be created")
    fails(capsys, 2, convert_main, ["--src", src], "--dst")
    fails(capsys, 1, convert_main, ["--src", src, "--dst", tmp_path / "dst"], "has no config.json")
    (src / "config.json").write_text('{"model_type": "internlm2",')
    fails(capsys, 1, convert_main, ["--src", src, "--dst", tmp_path / "dst"], "config.json", "cannot be read as JSON")
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    fails(capsys, 1, convert_main, ["--src", src, "--dst", tmp_path / "dst"], "already a Llama checkpoint")


# ----------------------------------------------------------------------------- merge_lora, lora_budget


def test_merge_lora_bad_paths(files, tmp_path, capsys):
    out = tmp_path / "merged"
    fails(capsys, 2, merge_lora_main, ["--model-path", files / "no_run", "--model-base", files / "folder",
                                       "--save-model-path", out], "no_run", "does not exist")
    fails(capsys, 2, merge_lora_main, ["--model-path", files / "folder", "--model-base", files / "folder",
                                       "--save-model-path", out], "no adapter_config.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "adapter_config.json").write_text('{"r": 4,')
    fails(capsys, 1, merge_lora_main, ["--model-path", run, "--model-base", files / "folder", "--save-model-path",
                                       out], "adapter_config.json", "is not valid JSON")
    (run / "adapter_config.json").write_text('{"r": 4}')
    fails(capsys, 1, merge_lora_main, ["--model-path", run, "--model-base", files / "folder", "--save-model-path",
                                       out], "lacks adapter_model.safetensors")
    fails(capsys, 2, merge_lora_main, ["--model-path", run, "--model-base", files / "folder", "--save-model-path",
                                       files / "plain.txt" / "merged"], "--save-model-path", "cannot be created")
    fails(capsys, 2, merge_lora_main, ["--model-path", run, "--model-base", files / "folder", "--save-model-path",
                                       run], "--save-model-path", "not an empty folder")


def test_model_vqa_bad_options(files, tmp_path, capsys):
    base = ["--model-path", files / "folder", "--answers-file", tmp_path / "a.jsonl"]
    fails(capsys, 2, model_vqa_main, [*base, "--question-file", files / "nowhere.jsonl"], "--question-file")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "text": "Hi"}\n')
    fails(capsys, 2, model_vqa_main, [*base, "--question-file", questions, "--num-chunks", 2, "--chunk-idx", 2],
          "--chunk-idx")
    fails(capsys, 2, model_vqa_main, [*base, "--question-file", questions, "--num-chunks", 0], "--num-chunks must be >= 1")
    fails(capsys, 2, model_vqa_main, [*base, "--question-file", questions, "--batch-size", 0], "--batch-size")
    questions.write_text("not json\n")
    fails(capsys, 1, model_vqa_main, [*base, "--question-file", questions], "q.jsonl line 1", "not valid JSON")


def test_lora_budget_unknown_model(capsys):
    fails(capsys, 2, lora_budget_main, ["--model", "no-such-preset"], "no-such-preset")


def test_a_run_stopped_by_its_guards_is_a_damaged_input_line(capsys):
    """A run the guards stop (NaN loss, too many bad records) raises `TrainingStopped`, which every
    main() reports as one line with status 1."""
    from llava.errors import TrainingStopped
    from llava.train.run_guards import SkipTracker

    def guarded_run(argv):
        SkipTracker(10, 0.1).add([], torch.tensor(float("nan")), step=3, epoch=0, batch_ids=["a"])

    with pytest.raises(TrainingStopped, match="training stopped: the loss is nan"):
        guarded_run(None)
    fails(capsys, 1, guarded_run, [], "training stopped", "step 3")
