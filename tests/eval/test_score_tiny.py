"""The tiny held-out split (`llava.tiny.eval_split`) and its scorer (`python -m llava.eval.score_tiny`)."""

import json
import logging
import os
import shutil

import pytest
from PIL import Image

from llava.errors import run_main
from llava.eval.score_tiny import main, normalise, score, wilson_interval
from llava.tiny.eval_split import _pixel_hash, generate_eval_split, training_pixel_hashes
from llava.tiny.images import EVAL_CATEGORIES


@pytest.fixture(scope="module")
def split(tiny_assets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_split")
    facts = generate_eval_split(folder, tiny_assets.data / "images", per_category=6, seed=3)
    return folder, facts, [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines()]


def test_split_has_every_category_on_unseen_scenes(split, tiny_assets):
    folder, facts, questions = split
    assert facts["per_category"] == dict.fromkeys(EVAL_CATEGORIES, 6)
    assert sorted({q["category"] for q in questions}) == sorted(EVAL_CATEGORIES) and len(questions) == 42
    training = training_pixel_hashes(tiny_assets.data / "images")
    for question in questions:
        with Image.open(folder / question["image"]) as image:
            assert _pixel_hash(image) not in training
        assert question["answer"] and question["text"].endswith("?")
    reading = [q for q in questions if q["category"] == "text_reading"]
    assert all(q["answer"].isalnum() and q["answer"].isupper() or q["answer"].isdigit() for q in reading)


def test_split_is_deterministic(split, tiny_assets, tmp_path):
    folder, _, _ = split
    generate_eval_split(tmp_path, tiny_assets.data / "images", per_category=6, seed=3)
    assert (tmp_path / "questions.jsonl").read_text() == (folder / "questions.jsonl").read_text()


@pytest.mark.parametrize(("reply", "gold"), [("A circle.", "circle"), ("three", "3."), (" Orange! ", "orange"),
                                              ("The top left.", "At the top left."[3:]), ("AB3", "ab3")])
def test_normalised_exact_match(reply, gold):
    assert normalise(reply) == normalise(gold)


def test_normalised_match_is_still_exact():
    assert normalise("A red circle.") != normalise("A circle.")
    assert normalise("2.") != normalise("3.")


def test_scores_missing_answers_as_wrong_with_wilson_intervals():
    questions = [{"question_id": f"{i}-count", "category": "count", "answer": "2."} for i in range(4)]
    answers = [{"question_id": "0-count", "text": "2"}, {"question_id": "1-count", "text": "Two."},
               {"question_id": "2-count", "text": "3."}]
    result = score(questions, answers)
    assert result["categories"]["count"] | {} == {"questions": 4, "correct": 2, "accuracy": 0.5,
                                                 "ci95": list(wilson_interval(2, 4))}
    assert result["unanswered"] == ["3-count"]
    low, high = wilson_interval(2, 4)
    assert round(low, 4) == 0.1500 and round(high, 4) == 0.8500


def test_answering_and_scoring_with_a_checkpoint(split, tiny_assets, tmp_path, capsys):
    folder, _, questions = split
    subset = folder / "subset.jsonl"
    subset.write_text("".join(json.dumps(q) + "\n" for q in questions[:4]))
    answers = tmp_path / "answers.jsonl"
    code = run_main(main, ["--model-path", str(tiny_assets.llava_proxyv), "--question-file", str(subset),
                           "--answers-file", str(answers), "--device", "cpu", "--json", str(tmp_path / "s.json")])
    assert code == 0 and len(answers.read_text().splitlines()) == 4
    out = capsys.readouterr().out
    assert "| background | 1 |" in out and "| text_reading | 0 |" in out
    assert json.loads((tmp_path / "s.json").read_text())["categories"]["background"]["questions"] == 1


def test_bad_invocations_are_one_line(tmp_path, capsys):
    assert run_main(main, ["--question-file", str(tmp_path / "none.jsonl"), "--answers-file", "a.jsonl"]) == 2
    assert "build the split with `python -m llava.tiny`" in capsys.readouterr().err
    assert run_main(main, []) in (2,)
    assert "Give --model-path" in capsys.readouterr().err


def test_answers_older_than_the_model_are_answered_again(split, tiny_assets, tmp_path, caplog):
    folder, _, questions = split
    subset = folder / "subset-one.jsonl"
    subset.write_text(json.dumps(questions[0]) + "\n")
    model = shutil.copytree(tiny_assets.llava_proxyv, tmp_path / "model")
    answers = tmp_path / "answers.jsonl"
    stale = {"question_id": questions[0]["question_id"], "prompt": "", "text": "STALE", "answer_id": "x", "model_id": "m"}
    answers.write_text(json.dumps(stale) + "\n")
    args = ["--model-path", str(model), "--question-file", str(subset), "--answers-file", str(answers), "--device", "cpu"]
    saved = os.path.getmtime(model / "config.json")  # copytree keeps the fixture's file times
    os.utime(answers, (saved + 60, saved + 60))  # newer than the model: reused as it is
    assert run_main(main, args) == 0
    assert json.loads(answers.read_text())["text"] == "STALE"
    os.utime(answers, (saved - 60, saved - 60))  # the model was saved after it: answered again
    with caplog.at_level(logging.WARNING):
        assert run_main(main, args) == 0
    assert json.loads(answers.read_text())["text"] != "STALE"
    assert any("older than the model" in record.getMessage() for record in caplog.records)
