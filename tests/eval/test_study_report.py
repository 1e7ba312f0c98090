"""`llava.eval.study_report`: the study's Markdown table, JSON and plot from a results dict."""

import json

import pytest
from PIL import Image

from llava.eval.study_report import group_chance, markdown_table, write_report
from tests.optional import import_extra

GROUPS = {"coarse": ("background", "shape"), "dense": ("dot_count",)}


def _score(correct: int, total: int) -> dict:
    return {"questions": total, "correct": correct, "accuracy": correct / total, "ci95": [0.1, 0.9]}


def _row(name, kind, llm, total, coarse, dense, fraction=None):
    return {"name": name, "kind": kind, "masked_fraction": fraction, "llm_flops": llm, "prefill_flops": total,
            "groups": {"coarse": _score(coarse, 20), "dense": _score(dense, 10)},
            "categories": {"background": _score(coarse // 2, 10), "shape": _score(coarse - coarse // 2, 10),
                           "dot_count": _score(dense, 10)}}


RESULTS = {"prompt": {"text_tokens": 30, "crops": 2},
           "methods": [_row("baseline", "baseline", 4e6, 10e6, 18, 9, 0.0), _row("proxyv", "proxyv", 3e6, 9e6, 17, 9),
                       _row("visionzip 24/36", "visionzip", 2e6, 8e6, 16, 5),
                       _row("mask q=1", "mask", 4e6, 10e6, 10, 2, 1.0)]}


def test_table_rows_give_flops_savings_and_accuracies_with_intervals():
    lines = markdown_table(RESULTS, GROUPS).splitlines()
    assert lines[0] == ("| method | LLM MFLOPs | LLM saved | total saved | coarse % [95% CI] | dense % [95% CI] | "
                        "background | shape | dot_count |")
    assert lines[2] == "| baseline | 4.00 | 0.0% | 0.0% | 90.0 [10.0, 90.0] | 90.0 [10.0, 90.0] | 90.0 | 90.0 | 90.0 |"
    assert lines[3].startswith("| proxyv | 3.00 | 25.0% | 10.0% | 85.0 [10.0, 90.0] |")
    assert lines[4].startswith("| visionzip 24/36 | 2.00 | 50.0% | 20.0% | 80.0 ")
    assert "coarse 20, dense 10" in lines[-1] and "30 text tokens, 2 crops" in lines[-1]
    assert "coarse 22.9%, dense 12.5%" in lines[-1]


def test_group_chance_is_the_mean_of_its_categories():
    assert group_chance(GROUPS) == pytest.approx({"coarse": (1 / 8 + 1 / 3) / 2, "dense": 1 / 8})


def test_report_files(tmp_path):
    import_extra("matplotlib")  # the train extra's
    paths = write_report(RESULTS, tmp_path, {"seed": 0}, GROUPS)
    assert json.loads(paths["json"].read_text())["settings"] == {"seed": 0}
    assert paths["markdown"].read_text().startswith("| method |")
    with Image.open(paths["plot"]) as image:
        assert image.format == "PNG" and image.width > 500
