"""`python -m llava.serve.cli` on the tiny checkpoints and the authors'-format golden checkpoint.

Three real subprocesses drive the CLI through a pipe (a two-turn ProxyV chat about two images with
`--debug`, the golden release checkpoint, a missing image); everything else calls `main()` or
`ChatSession` in-process with stdin replaced, which is as faithful and much cheaper.
"""

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from llava.conversation import get_conv_template
from llava.errors import run_main as run_entry_point
from llava.model.builder import load_pretrained_model
from llava.serve.cli import ChatSession, main, stopping_criteria
from llava.serve.inference import default_conv_mode, load_images
from tests.paths import GOLDEN

SYSTEM = get_conv_template("vicuna_v1").system


@pytest.fixture(scope="session")
def assets(tiny_assets):
    return tiny_assets


@pytest.fixture(scope="module")
def images(assets):
    """Two bundled images, as a comma-separated `--image-file` value."""
    paths = sorted((assets.data / "images").glob("*.png"))[:2]
    return ",".join(str(path) for path in paths)


def run_cli(args, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def run_main(args, stdin, monkeypatch, capsys):
    """`main(args)` in-process under the error policy (`llava.errors.run_main`, as `python -m` runs it)
    with `stdin` as standard input: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", stdin if not isinstance(stdin, str) else io.StringIO(stdin))
    code = run_entry_point(main, args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def debug_lines(stdout: str, key: str) -> list[str]:
    prefix = f"[debug] {key}: "
    return [ast.literal_eval(line[len(prefix) :]) for line in stdout.splitlines() if line.startswith(prefix)]


def assert_one_error_line(code: int, stderr: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0]


# ----------------------------------------------------------------------------- through a pipe


def test_piped_two_turn_proxyv_chat_keeps_the_dialogue(assets, images):
    result = run_cli(
        [
            "--model-path",
            str(assets.llava_proxyv),
            "--image-file",
            images,
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
            "--debug",
        ],
        "What is in the image?\nAnd what colour is it?\n",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "vicuna_v1" in result.stderr  # which template was chosen is logged
    prompts, replies = debug_lines(result.stdout, "prompt"), debug_lines(result.stdout, "reply")
    assert len(prompts) == len(replies) == 2 and all(replies)
    # One placeholder per image, in the first turn only; the second prompt holds the first exchange.
    assert prompts[0] == f"{SYSTEM} USER: <image>\n<image>\nWhat is in the image? ASSISTANT:"
    assert prompts[1] == f"{prompts[0]} {replies[0]}</s>USER: And what colour is it? ASSISTANT:"
    # Each reply was streamed after the assistant's role; EOF ends at a fresh USER prompt.
    streamed = re.findall(r"USER: ASSISTANT:(.*?)\n\[debug\] prompt", result.stdout, flags=re.S)
    assert [text.strip() for text in streamed] == replies
    assert [line for line in result.stdout.splitlines() if line.startswith("USER: ")][2:] == ["USER: "]
    assert result.stdout.endswith("USER: \n")


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden release checkpoints not present")
def test_golden_release_checkpoint_answers(tmp_path):
    checkpoint = tmp_path / "spatial_s1"
    shutil.copytree(GOLDEN / "spatial_s1", checkpoint)
    config = checkpoint / "config.json"
    config.write_text(config.read_text().replace('"CLIP_DIR"', json.dumps(str(GOLDEN / "clip"))))
    result = run_cli(
        [
            "--model-path",
            str(checkpoint),
            "--image-file",
            str(GOLDEN / "images" / "img0.png"),
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
        ],
        "What is this?\n",
    )
    assert result.returncode == 0, result.stderr
    assert "LlavaProxyVLlamaForCausalLM" in result.stderr
    answer = result.stdout.split("ASSISTANT: ", 1)[1].split("\n", 1)[0]
    assert answer.strip()


def test_missing_image_is_one_line_naming_the_file(assets, tmp_path):
    missing = tmp_path / "no_such_image.png"
    result = run_cli(["--model-path", str(assets.llava_proxyv), "--image-file", str(missing)], "hi\n")
    assert_one_error_line(result.returncode, result.stderr, str(missing))


# ----------------------------------------------------------------------------- in-process


def test_baseline_streams_exactly_the_reply(assets, images, monkeypatch, capsys):
    """The streamer prints the generated tokens only (our generate feeds embeddings)."""
    tokenizer, model, processor, context_len = load_pretrained_model(str(assets.llava), device="cpu")
    session = ChatSession(
        tokenizer,
        model,
        processor,
        load_images(images),
        "vicuna_v1",
        context_len,
        temperature=0,
        max_new_tokens=6,
    )
    expected = session.ask("Describe the image.")
    code, out, err = run_main(
        [
            "--model-path",
            str(assets.llava),
            "--image-file",
            images,
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
        ],
        "Describe the image.\n",
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    head, tail = "USER: ASSISTANT:", "\nUSER: \n"
    assert out.startswith(head) and out.endswith(tail)
    assert out[len(head) : -len(tail)].strip() == expected


def test_text_only_session_and_empty_line_ends(assets, monkeypatch, capsys):
    code, out, err = run_main(
        ["--model-path", str(assets.llava_proxyv), "--temperature", "0", "--max-new-tokens", "4", "--debug"],
        "Hello\n\nnever read\n",
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    prompts = debug_lines(out, "prompt")
    assert prompts == [f"{SYSTEM} USER: Hello ASSISTANT:"]  # no placeholder without images
    assert out.count("ASSISTANT: ") == 1 and out.endswith("USER: ")


class _CtrlC(io.StringIO):
    def readline(self, *args):
        raise KeyboardInterrupt


def test_ctrl_c_exits_cleanly(assets, monkeypatch, capsys):
    code, out, _ = run_main(["--model-path", str(assets.llava_proxyv)], _CtrlC(), monkeypatch, capsys)
    assert code == 0
    assert out == "USER: \n"


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model-path", "/no/such/checkpoint"], ["/no/such/checkpoint"]),
        (["--conv-mode", "nope"], ["'nope'", "vicuna_v1", "llava_llama_3"]),
        (["--image-file", "a.png,,b.png"], ["empty entry"]),
        (["--temperature", "-1"], ["--temperature"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    ],
    ids=["bad-model-path", "unknown-template", "empty-image-entry", "negative-temperature", "no-new-tokens"],
)
def test_bad_input_is_one_line(args, needles, assets, monkeypatch, capsys):
    if args[0] != "--model-path":
        args = ["--model-path", str(assets.llava_proxyv), *args]
    code, _, err = run_main(args, "hi\n", monkeypatch, capsys)
    assert_one_error_line(code, err, *needles)


def test_unreadable_image_is_one_line(assets, tmp_path, monkeypatch, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    code, _, err = run_main(
        ["--model-path", str(assets.llava_proxyv), "--image-file", str(not_an_image)],
        "hi\n",
        monkeypatch,
        capsys,
    )
    assert_one_error_line(code, err, str(not_an_image))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
@pytest.mark.parametrize("flag", ["--load-8bit", "--load-4bit"])
def test_quantized_loading_without_cuda_is_one_line(flag, assets, monkeypatch, capsys):
    code, _, err = run_main(["--model-path", str(assets.llava_proxyv), flag], "hi\n", monkeypatch, capsys)
    assert_one_error_line(code, err, "CUDA")


# ----------------------------------------------------------------------------- pieces


def test_default_conv_mode():
    assert (
        default_conv_mode(SimpleNamespace(conv_template="llava_llama_3", model_type="llava_llama"))
        == "llava_llama_3"
    )
    assert default_conv_mode(SimpleNamespace(model_type="llava_llama")) == "vicuna_v1"
    assert default_conv_mode(SimpleNamespace(model_type="llava_proxyv_llama")) == "vicuna_v1"
    assert default_conv_mode(SimpleNamespace(model_type="llava_proxyv_qwen")) == "qwen_1_5"
    assert default_conv_mode(SimpleNamespace(model_type="llava_phi", conv_template="plain")) == "phi3_instruct"
    with pytest.raises(ValueError, match="--conv-mode"):
        default_conv_mode(SimpleNamespace(model_type="llava_gemma"))


def test_stop_is_eos_for_vicuna_and_a_keyword_otherwise(assets):
    tokenizer = load_pretrained_model(str(assets.llava_proxyv), device="cpu")[0]
    assert tokenizer.eos_token == "</s>"
    assert stopping_criteria(get_conv_template("vicuna_v1"), tokenizer, 0) is None
    (criterion,) = stopping_criteria(get_conv_template("chatml_direct"), tokenizer, 0)
    assert criterion.keywords == ["<|im_end|>"]


def test_over_long_conversation_is_refused_and_not_kept(assets, images):
    tokenizer, model, processor, _ = load_pretrained_model(str(assets.llava_proxyv), device="cpu")
    session = ChatSession(
        tokenizer,
        model,
        processor,
        load_images(images),
        "vicuna_v1",
        context_len=100,
        temperature=0,
        max_new_tokens=8,
    )
    with pytest.raises(ValueError, match="context of 100 tokens"):
        session.ask("What is in the image?")
    assert session.conversation.messages == []


def test_should_stop_ends_the_reply_after_one_token(assets):
    """The hook the web demo uses to stop a cancelled request: generation ends at the next token."""
    from transformers.generation.streamers import BaseStreamer

    class TokenCounter(BaseStreamer):
        def __init__(self):
            self.calls = 0

        def put(self, value):  # the first call carries the prompt, each later one a new token
            self.calls += 1

        def end(self):
            pass

    tokenizer, model, processor, context_len = load_pretrained_model(str(assets.llava_proxyv), None, None, device="cpu")
    images = load_images(str(assets.example_image()))
    counts = []
    for should_stop in (lambda: True, None):
        counter = TokenCounter()
        session = ChatSession(tokenizer, model, processor, images, "vicuna_v1", context_len, temperature=0.0,
                              max_new_tokens=12, streamer=counter, should_stop=should_stop)
        session.ask("Describe the image briefly.")
        counts.append(counter.calls - 1)
    assert counts[0] == 1 and counts[1] > 1, counts
