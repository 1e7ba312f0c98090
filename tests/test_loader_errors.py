"""Bad paths, a checkpoint whose weights do not fit its config, and an unknown model type: the
chat CLI, `run_llava` and `train.py` each answer in one line that names the problem and the fix."""

import json
import logging
import shutil
import subprocess
import sys

import pytest

from llava.errors import run_main as run_entry_point
from llava.eval.run_llava import main as run_llava_main
from llava.model.builder import _DropLoadReport, load_pretrained_model
from llava.train.check_data import TrainingSetupError, check_training_paths
from tests.serve.test_cli import run_main
from tests.train.test_two_stage import TRAIN


@pytest.fixture(scope="module")
def broken_checkpoints(tiny_assets, tmp_path_factory):
    """Copies of the tiny LLaVA: one whose config.json was widened, one with an unknown model type."""
    root = tmp_path_factory.mktemp("broken_ckpt")
    wrong_shape, unknown_type = root / "wrong_shape", root / "unknown_type"
    for folder, change in ((wrong_shape, {"intermediate_size": 999}), (unknown_type, {"model_type": "llava_mystery"})):
        shutil.copytree(tiny_assets.llava, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
    return {"wrong_shape": wrong_shape, "unknown_type": unknown_type, "missing": root / "nowhere"}


def assert_one_error_line(code: int, stderr: str, *needles: str) -> None:
    """Exit status not 0, and besides transformers' weight-loading progress bar one line: `error: ...`."""
    lines = [line for line in stderr.strip().splitlines() if "Loading weights" not in line]
    assert code != 0 and "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert all(needle in lines[0] for needle in needles), (needles, lines[0])


NEEDLES = {
    "wrong_shape": ["of another shape than its config.json builds", "999", "put the checkpoint's own config.json back"],
    "unknown_type": ["llava_mystery"],
    "missing": ["does not exist"],
}


def test_wrong_shape_checkpoint_is_a_clear_error(broken_checkpoints):
    with pytest.raises(ValueError, match=r"holds \d+ weight\(s\) of another shape .* 999\] in the model"):
        load_pretrained_model(str(broken_checkpoints["wrong_shape"]), None, None, device="cpu")


@pytest.mark.parametrize("case", list(NEEDLES))
def test_chat_cli_and_run_llava_answer_in_one_line(case, broken_checkpoints, tiny_assets, monkeypatch, capsys):
    path = str(broken_checkpoints[case])
    code, _, err = run_main(["--model-path", path], "hi\n", monkeypatch, capsys)
    assert_one_error_line(code, err, *NEEDLES[case])
    code = run_entry_point(run_llava_main, ["--model-path", path, "--image-file", str(tiny_assets.example_image()),
                                            "--query", "hi"])
    assert_one_error_line(code, capsys.readouterr().err, *NEEDLES[case])


def test_training_paths_are_checked_before_loading(tiny_assets, tmp_path):
    good = (str(tiny_assets.llm), str(tiny_assets.clip), str(tiny_assets.captions), str(tiny_assets.data))
    check_training_paths(*good)
    cases = [
        ((str(tmp_path / "llm"), *good[1:]), "--model_name_or_path .* does not exist"),
        ((str(tmp_path), *good[1:]), "has no config.json"),
        ((good[0], "./clip", *good[2:]), "--vision_tower ./clip does not exist"),
        ((*good[:2], f"{good[2]},{tmp_path / 'b.json'}", good[3]), r"--data_path .*b.json does not exist"),
        ((*good[:2], str(tmp_path), good[3]), r"--data_path .* is not a file"),
        ((*good[:3], str(tmp_path / "images")), "--image_folder .* does not exist"),
        ((*good[:3], good[2]), "--image_folder .* is not a folder"),
    ]
    for args, message in cases:
        with pytest.raises(TrainingSetupError, match=message):
            check_training_paths(*args)
    # Through the real entry point: one line on stderr, no traceback.
    result = subprocess.run([sys.executable, TRAIN, "--model_name_or_path", good[0], "--data_path",
                             str(tmp_path / "none.json"), "--output_dir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --data_path")


def test_load_report_is_hidden_unless_it_explains_a_conversion_error():
    """The builder's filter drops transformers' weight table, which it reports itself, but never the
    CONVERSION entries that transformers' own error message points to."""
    def record(message):
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, message, None, None)

    report_filter = _DropLoadReport()
    assert not report_filter.filter(record("LlavaLlamaForCausalLM LOAD REPORT from: x\nkey | MISSING"))
    assert report_filter.filter(record("LlavaLlamaForCausalLM LOAD REPORT from: x\nkey | CONVERSION | details"))
    assert report_filter.filter(record("an unrelated warning"))
