"""`llava.eval.small_scale_study` and `llava.eval.study_runner` on tiny settings: the options, the
settings guard, the launch-script wiring (with stand-in scripts), and every method answering and
being scored on the tiny checkpoints. The full study is a benchmark, not a test."""

import json
import os
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from llava.errors import UsageError, UserError, run_main
from llava.eval import small_scale_study as study
from llava.eval import study_runner
from llava.eval.score_tiny import normalise
from llava.eval.study_runner import evaluate_methods
from llava.model.builder import load_pretrained_model
from llava.tiny.study_data import QUESTIONS_FILENAME, generate_study_data


@pytest.mark.parametrize("argv, message", [
    (["--scenes-per-group", "0"], "--scenes-per-group must be at least 1"),
    (["--mask-fractions", "0.5,x"], "--mask-fractions must be numbers"),
    (["--mask-fractions", "1.5"], "--mask-fractions must be values in (0, 1]"),
    (["--proxyv-start-layer", "-1"], "--proxyv-start-layer must be in [0, 3]"),
    (["--proxyv-start-layer", "4"], "--proxyv-start-layer must be in [0, 3]"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--device", "tpu"], "--device 'tpu' is not a device these tools run on"),
])
def test_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    assert run_main(study.main, ["--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_an_out_that_is_or_lies_under_a_file_is_one_line_error(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("")
    for out, message in ((file, "is a file; give a folder for the study"), (file / "s", "cannot be created")):
        assert run_main(study.main, ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}") and message in err and err.count("\n") == 1


def test_settings_are_the_preset_with_overrides_and_a_folder_keeps_its_settings(tmp_path):
    settings = study.resolve_settings(study.parse_args(["--quick", "--stage2-epochs", "1", "--tiny-dir", "t"]))
    assert settings["scenes_per_group"] == study.PRESETS["quick"]["scenes_per_group"]
    assert settings["stage2_epochs"] == 1 and settings["mask_fractions"] == [0.25, 0.5, 0.75, 1.0]
    assert study.PRESETS["quick"]["questions_per_category"] >= 300  # the 95% intervals need 300 per group
    study.check_settings(tmp_path, settings)
    study.check_settings(tmp_path, settings)  # the same settings continue
    with pytest.raises(UsageError, match="other settings \\(stage2_epochs differ\\)"):
        study.check_settings(tmp_path, {**settings, "stage2_epochs": 2})
    older_version = {key: value for key, value in settings.items() if key != "data_version"}
    with pytest.raises(UsageError, match="data_version differ"):  # a folder of an older data version is refused
        study.check_settings(tmp_path, older_version)


STAND_IN = """#!/usr/bin/env bash
echo "$(basename "$0") PYTHON=$(command -v python) LLM=${LLM_VERSION:-} ${PROXYV_VARIANT:-} ${LORA:-} PROXYV_START_LAYER=${PROXYV_START_LAYER} TINY_DIR=${TINY_DIR} $*" \
  >> "${OUTPUT_ROOT}/calls.log"
[ -n "${FAIL:-}" ] && exit 3
case "$(basename "$0")" in finetune_*) kind=${PROXYV_START_LAYER/none/baseline}; [ "$kind" = baseline ] || kind=proxyv-s$kind
  mkdir -p "${OUTPUT_ROOT}/tiny-vicuna-${kind}-finetune" && echo '{}' > "${OUTPUT_ROOT}/tiny-vicuna-${kind}-finetune/config.json";;
esac
"""


@pytest.fixture
def stand_in_scripts(tmp_path, monkeypatch):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("pretrain_baseline", "finetune_baseline", "pretrain_proxyv", "finetune_proxyv"):
        (scripts / f"{name}.sh").write_text(STAND_IN)
    monkeypatch.setattr(study, "SCRIPTS_DIR", scripts)
    return scripts


def test_training_runs_both_stages_of_each_model_with_the_study_data(stand_in_scripts, tmp_path, monkeypatch):
    for name, value in (("LLM_VERSION", "some/real-model"), ("PROXYV_VARIANT", "vision_mlp"), ("LORA", "True")):
        monkeypatch.setenv(name, value)  # a user's shell settings must not change the study's recipe
    settings = study.resolve_settings(study.parse_args(["--quick", "--tiny-dir", str(tmp_path / "tiny")]))
    out, data = tmp_path / "study", tmp_path / "study" / "data"
    (out / "runs").mkdir(parents=True)
    assert study.train("baseline", out, data, settings).name == "tiny-vicuna-baseline-finetune"
    assert study.train("proxyv", out, data, settings).name == "tiny-vicuna-proxyv-s2-finetune"
    calls = (out / "runs" / "calls.log").read_text().splitlines()
    assert [call.split()[0] for call in calls] == ["pretrain_baseline.sh", "finetune_baseline.sh",
                                                   "pretrain_proxyv.sh", "finetune_proxyv.sh"]
    assert "PROXYV_START_LAYER=none" in calls[0] and "PROXYV_START_LAYER=2" in calls[2]
    # the shell's settings are cleared (LORA=True would print "True" before PROXYV_START_LAYER)
    assert all(" LLM= " in call and "vision_mlp" not in call and "True PROXYV" not in call for call in calls)
    recipe = " ".join(study.STUDY_STAGE2_RECIPE)  # the study's own stage 2, not the tiny curriculum's
    assert recipe in calls[1] and recipe in calls[3] and recipe not in calls[0]
    assert f"--data_path {data.resolve()}/study_captions.json" in calls[0]
    assert f"--data_path {data.resolve()}/study_instruct.json" in calls[1]
    assert f"--num_train_epochs {settings['stage2_epochs']}" in calls[1] and "--num_train_epochs" not in calls[0]
    assert f"TINY_DIR={tmp_path / 'tiny'}" in calls[0]
    assert f"PYTHON={os.path.dirname(sys.executable)}{os.sep}python " in calls[0]  # this interpreter's environment
    study.train("baseline", out, data, settings)  # finished: reused, no new call
    assert len((out / "runs" / "calls.log").read_text().splitlines()) == 4


def test_a_failing_stage_names_the_model_and_stage(stand_in_scripts, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL", "1")
    settings = study.resolve_settings(study.parse_args(["--quick"]))
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="the proxyv model's pretrain stage failed \\(exit status 3"):
        study.train("proxyv", tmp_path, tmp_path / "data", settings)


def test_every_method_answers_every_question_and_is_scored(tiny_assets, tmp_path, monkeypatch):
    loaded = []

    def recording_loader(*args, **kwargs):  # the config each method's model is really built with
        model = load_pretrained_model(*args, **kwargs)
        loaded.append(model[1].config)
        return model

    monkeypatch.setattr(study_runner, "load_pretrained_model", recording_loader)
    data = tmp_path / "data"
    generate_study_data(data, scenes_per_group=2, questions_per_category=3)
    checkpoints = {"baseline": tiny_assets.llava, "proxyv": tiny_assets.llava_proxyv}
    results = evaluate_methods(checkpoints, data, tmp_path / "answers", [1.0], Namespace(batch_size=4, device="cpu"))
    questions = [json.loads(line) for line in (data / QUESTIONS_FILENAME).read_text().splitlines()]
    names = [row["name"] for row in results["methods"]]
    assert names == ["baseline", "proxyv", "visionzip 24/36", "visionzip 12/36", "pyramiddrop 2,3", "mask q=1"]
    assert results["prompt"]["crops"] >= 2 and results["prompt"]["text_tokens"] > 5  # AnyRes: base + tiles
    for row in results["methods"]:
        lines = Path(row["answers_file"]).read_text().splitlines()
        answers = {json.loads(line)["question_id"]: json.loads(line)["text"] for line in lines}
        assert set(answers) == {q["question_id"] for q in questions}
        for group, score in row["groups"].items():
            asked = [q for q in questions if q["group"] == group]
            assert score["questions"] == len(asked)
            assert score["correct"] == sum(normalise(answers[q["question_id"]]) == normalise(q["answer"]) for q in asked)
    by_name = dict(zip(names, loaded, strict=True))
    assert by_name["visionzip 12/36"].vision_token_reduction == "visionzip"
    assert by_name["visionzip 12/36"].visionzip_dominant + by_name["visionzip 12/36"].visionzip_contextual == 12
    assert by_name["pyramiddrop 2,3"].pyramid_drop_layers == [2, 3]
    assert by_name["mask q=1"].proxyv_variant == "mask_vision_attention" and by_name["mask q=1"].proxyv_start_layer == 0
    assert by_name["proxyv"].proxyv_start_layer is not None and by_name["baseline"].vision_token_reduction is None
    before = {path.name: path.read_text() for path in (tmp_path / "answers").iterdir()}
    evaluate_methods(checkpoints, data, tmp_path / "answers", [1.0], Namespace(batch_size=4, device="cpu"))
    assert before == {path.name: path.read_text() for path in (tmp_path / "answers").iterdir()}  # answers reused

    baseline_answers = Path(results["methods"][0]["answers_file"])
    baseline_answers.write_text("".join(json.dumps({**json.loads(line), "text": "stale"}) + "\n"
                                        for line in before[baseline_answers.name].splitlines()))
    questions_written = baseline_answers.stat().st_mtime + 10  # the questions were written again since
    os.utime(data / QUESTIONS_FILENAME, (questions_written, questions_written))
    evaluate_methods(checkpoints, data, tmp_path / "answers", [1.0], Namespace(batch_size=4, device="cpu"))

    def texts(lines: str) -> dict:
        return {json.loads(line)["question_id"]: json.loads(line)["text"] for line in lines.splitlines()}

    assert texts(baseline_answers.read_text()) == texts(before[baseline_answers.name])  # answered again, not reused
