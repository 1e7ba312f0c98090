"""The small-scale study's report: `study.json`, a Markdown table (`study.md`) and a plot (`study.png`).

The table has one row per method: its prefill FLOPs for one held-out question and the saving against
the baseline (the decoder's, as the paper counts, and the whole prefill's), then each group's accuracy with its 95% Wilson interval, then each category's accuracy.
The plot's left panel is accuracy against the decoder's prefill FLOPs per method and group (error bars: the 95%
intervals); the right panel is the masking curve, accuracy against the masked fraction of layers
(0 is the baseline).
"""

from __future__ import annotations

import json
from pathlib import Path

from llava.errors import UsageError
from llava.tiny.study_data import CATEGORY_CHANCE

GROUP_MARKERS = {"coarse": "o", "dense": "s"}


def _percent(row: dict) -> str:
    if row["accuracy"] is None:
        return "-"
    low, high = row["ci95"]
    return f"{100 * row['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def group_chance(groups: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Each group's chance accuracy: the mean of its categories' (each category has as many questions)."""
    return {group: sum(CATEGORY_CHANCE[c] for c in members) / len(members) for group, members in groups.items()}


def markdown_table(results: dict, groups: dict[str, tuple[str, ...]]) -> str:
    methods = results["methods"]
    baseline = next(row for row in methods if row["kind"] == "baseline")
    categories = [category for members in groups.values() for category in members]
    chance = group_chance(groups)
    header = ["method", "LLM MFLOPs", "LLM saved", "total saved"] + [f"{group} % [95% CI]" for group in groups]
    header += categories
    lines = ["| " + " | ".join(header) + " |", "| --- " + "| ---: " * (len(header) - 1) + "|"]
    for row in methods:
        llm_saved = 1 - row["llm_flops"] / baseline["llm_flops"]
        saved = 1 - row["prefill_flops"] / baseline["prefill_flops"]
        cells = [row["name"], f"{row['llm_flops'] / 1e6:.2f}", f"{100 * llm_saved:.1f}%", f"{100 * saved:.1f}%"]
        cells += [_percent(row["groups"][group]) for group in groups]
        cells += [f"{100 * row['categories'][c]['accuracy']:.1f}" for c in categories]
        lines.append("| " + " | ".join(cells) + " |")
    prompt = results["prompt"]
    questions = ", ".join(f"{group} {baseline['groups'][group]['questions']}" for group in groups)
    lines.append("")
    lines.append(f"Held-out questions: {questions}. Chance: "
                 + ", ".join(f"{group} {100 * value:.1f}%" for group, value in chance.items())
                 + f". FLOPs: one held-out question's prefill ({prompt['text_tokens']} text tokens, "
                 f"{prompt['crops']} crops): the decoder's (LLM), and the total with the tower, projector "
                 "and last-token head.")
    return "\n".join(lines)


def plot(results: dict, groups: dict[str, tuple[str, ...]], path: Path) -> None:
    """Accuracy vs prefill FLOPs (left) and vs masked fraction (right), one series per group."""
    try:
        import matplotlib
    except ImportError as error:
        raise UsageError("the study's plot needs matplotlib: pip install -e \".[train]\"") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for group in groups:
        for row in (r for r in methods if r["kind"] != "mask"):
            accuracy, (low, high) = row["groups"][group]["accuracy"], row["groups"][group]["ci95"]
            left.errorbar(row["llm_flops"] / 1e6, 100 * accuracy, yerr=[[100 * (accuracy - low)],
                          [100 * (high - accuracy)]], fmt=GROUP_MARKERS.get(group, "^"), capsize=3,
                          color=f"C{methods.index(row)}", label=f"{row['name']} ({group})")
        curve = sorted((r["masked_fraction"], r["groups"][group]) for r in methods if r["masked_fraction"] is not None)
        right.errorbar([fraction for fraction, _ in curve], [100 * g["accuracy"] for _, g in curve],
                       yerr=[[100 * (g["accuracy"] - g["ci95"][0]) for _, g in curve],
                             [100 * (g["ci95"][1] - g["accuracy"]) for _, g in curve]],
                       marker=GROUP_MARKERS.get(group, "^"), capsize=3, label=group)
    for group, value in group_chance(groups).items():
        right.axhline(100 * value, linestyle=":", color="gray")
        right.annotate(f"chance ({group})", (0, 100 * value), fontsize=7, color="gray")
    left.set(xlabel="LLM prefill MFLOPs per question", ylabel="held-out accuracy (%)",
             title="accuracy vs prefill cost (o coarse, s dense)")
    left.legend(fontsize=6, ncol=2)
    right.set(xlabel="masked fraction of layers (vision-to-vision attention)", ylabel="held-out accuracy (%)",
              title="training-free vision masking on the baseline")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: dict, out: Path, settings: dict, groups: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """Write study.json, study.md and study.png under `out`; returns their paths."""
    paths = {"json": out / "study.json", "markdown": out / "study.md", "plot": out / "study.png"}
    paths["json"].write_text(json.dumps({"settings": settings, **results}, indent=1), encoding="utf-8")
    paths["markdown"].write_text(markdown_table(results, groups) + "\n", encoding="utf-8")
    plot(results, groups, paths["plot"])
    return paths
