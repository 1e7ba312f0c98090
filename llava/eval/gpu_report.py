"""Rows, reductions, summary and Markdown table of `python -m llava.eval.gpu_benchmark`.

One row per (attention backend, variant). A measured row carries its variant's prefill FLOPs (from
the meta counter of `llava.eval.prefill_benchmark.flops_row`: `total_flops` with the vision tower,
projector and LM head, `llm_flops` the decoder alone) and one record per phase (`llava.eval.gpu_steps`):
`prefill`, `decode`, `train_checkpointed`, `train_no_checkpointing` (which carries its own
`num_layers` / `proxyv_start_layer` when it was measured on a shallower model). Reductions are
`1 - variant / baseline` of the medians, against the baseline row of the same backend (and depth);
`prefill_gap_points` is the prefill time reduction minus the total FLOPs reduction, in percentage
points. A backend that could not run is one row with `status` "skipped" or "failed" and the reason.
"""

from __future__ import annotations

import json
import os

from llava.eval.mask_build import format_mask_build

PHASES = ("prefill", "decode", "train_checkpointed", "train_no_checkpointing")
GOAL_POINTS = 2.0  # the goal: prefill time reduction within 2 points of the FLOPs reduction


def measured_row(backend: str, flops: dict, phases: dict) -> dict:
    """A row of one measured variant: its FLOPs and every phase's record."""
    row = {"backend": backend, "variant": flops["variant"], "proxyv_start_layer": flops["proxyv_start_layer"],
           "num_layers": flops["num_layers"], "status": "measured", "reason": None,
           "total_flops": flops["total_flops"], "llm_flops": flops["llm_flops"],
           "total_flops_reduction": None, "llm_flops_reduction": None}
    return {**row, **phases}


def unmeasured_row(backend: str, status: str, reason: str, flops: dict | None = None) -> dict:
    """A backend (or a variant of it) that did not run: `status` "skipped" or "failed"."""
    row = {"backend": backend, "variant": None, "proxyv_start_layer": None, "num_layers": None}
    if flops is not None:
        row.update(variant=flops["variant"], proxyv_start_layer=flops["proxyv_start_layer"],
                   num_layers=flops["num_layers"])
    return {**row, "status": status, "reason": reason}


def _reduction(value, baseline) -> float | None:
    if value is None or not baseline:
        return None
    return 1.0 - value / baseline


def _phase_time(row: dict, phase: str) -> tuple[float | None, int | None]:
    """(median time, depth it was measured at) of a phase, (None, None) where it did not run."""
    record = row.get(phase) or {}
    return record.get("time_s"), record.get("num_layers", row.get("num_layers"))


def add_reductions(rows: list[dict], flops_rows: list[dict]) -> None:
    """FLOPs reductions (against the baseline's FLOPs) and time reductions (against the baseline of the
    same backend, measured at the same depth) of every measured row; the prefill gap in points."""
    flops_baseline = next(row for row in flops_rows if row["variant"] == "baseline")
    baselines = {row["backend"]: row for row in rows if row["variant"] == "baseline" and row["status"] == "measured"}
    for row in rows:
        if row["status"] != "measured":
            continue
        row["total_flops_reduction"] = _reduction(row["total_flops"], flops_baseline["total_flops"])
        row["llm_flops_reduction"] = _reduction(row["llm_flops"], flops_baseline["llm_flops"])
        baseline = baselines.get(row["backend"])
        for phase in PHASES:
            value, depth = _phase_time(row, phase)
            base_value, base_depth = _phase_time(baseline, phase) if baseline else (None, None)
            row[f"{phase}_time_reduction"] = _reduction(value, base_value) if depth == base_depth else None
        time_reduction, flops_reduction = row["prefill_time_reduction"], row["total_flops_reduction"]
        row["prefill_gap_points"] = None if time_reduction is None else 100 * (time_reduction - flops_reduction)


def summarize(rows: list[dict]) -> dict:
    """The fastest backend (shortest baseline prefill) and whether its ProxyV rows meet the goal: a
    prefill time reduction at most `GOAL_POINTS` below the total FLOPs reduction."""
    baselines = [row for row in rows if row["variant"] == "baseline" and row["status"] == "measured"]
    if not baselines:
        return {"fastest_backend": None, "goal": None, "rows": []}
    fastest = min(baselines, key=lambda row: row["prefill"]["time_s"])["backend"]
    checked = [{"proxyv_start_layer": row["proxyv_start_layer"], "total_flops_reduction": row["total_flops_reduction"],
                "prefill_time_reduction": row["prefill_time_reduction"], "gap_points": row["prefill_gap_points"],
                "within_goal": row["prefill_gap_points"] >= -GOAL_POINTS}
               for row in rows if row["backend"] == fastest and row["variant"] != "baseline"
               and row["status"] == "measured"]
    goal = all(item["within_goal"] for item in checked) if checked else None
    return {"fastest_backend": fastest, "goal_points": GOAL_POINTS, "goal": goal, "rows": checked}


# ----------------------------------------------------------------------------- Markdown


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _points(value) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _ms(record: dict | None) -> str:
    """A phase's median in ms with its (min-max), or why it did not run."""
    if not record:
        return "-"
    if "skipped" in record:
        return "OOM" if record["skipped"] == "out of memory" else "n/a"
    return f"{1e3 * record['time_s']:.1f} ({1e3 * record['min_s']:.1f}-{1e3 * record['max_s']:.1f})"


def _mb(record: dict | None) -> str:
    value = (record or {}).get("peak_memory_mb")
    return "-" if value is None else f"{value:.0f}"


def _no_checkpointing_depth(row: dict) -> str:
    record = row.get("train_no_checkpointing") or {}
    if "num_layers" not in record:
        return str(row["num_layers"])
    if record["proxyv_start_layer"] is None:
        return str(record["num_layers"])
    return f"{record['num_layers']} (s = {record['proxyv_start_layer']})"


HEADER = ("backend", "variant", "s", "total TF", "FLOPs red.", "prefill ms", "prefill red.", "red. - FLOPs red. (pts)",
          "decode ms", "decode red.", "train ms (ckpt)", "train red. (ckpt)", "train ms (no ckpt)",
          "train red. (no ckpt)", "layers (no ckpt)", "prefill MB", "train MB (ckpt)", "train MB (no ckpt)")


def _cells(row: dict) -> list[str]:
    start = "-" if row["proxyv_start_layer"] is None else str(row["proxyv_start_layer"])
    if row["status"] != "measured":
        what = f"{row['status']}: {row['reason']}"
        if row["variant"] is None:  # the whole backend
            return [row["backend"], what] + ["-"] * (len(HEADER) - 2)
        return [row["backend"], row["variant"], start, what] + ["-"] * (len(HEADER) - 4)
    return [row["backend"], row["variant"], start, f"{row['total_flops'] / 1e12:.3f}",
            _percent(row["total_flops_reduction"]), _ms(row["prefill"]), _percent(row["prefill_time_reduction"]),
            _points(row["prefill_gap_points"]), _ms(row["decode"]), _percent(row["decode_time_reduction"]),
            _ms(row["train_checkpointed"]), _percent(row["train_checkpointed_time_reduction"]),
            _ms(row.get("train_no_checkpointing")), _percent(row.get("train_no_checkpointing_time_reduction")),
            _no_checkpointing_depth(row), _mb(row["prefill"]), _mb(row["train_checkpointed"]),
            _mb(row.get("train_no_checkpointing"))]


def format_rows(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def format_tiny_training(tiny: dict) -> str:
    lines = ["| variant | s | batch | steps (short, long) | samples/s (steady) | speed-up | trainer samples/s (long run) |",
             "|---|---|---|---|---|---|---|"]
    for row in tiny["rows"]:
        steady = "-" if row["samples_per_second"] is None else f"{row['samples_per_second']:.1f}"
        speedup = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        start = "-" if row["proxyv_start_layer"] is None else str(row["proxyv_start_layer"])
        lines.append(f"| {row['variant']} | {start} | {row['batch_size']} | {row['steps'][0]}, {row['steps'][1]} | "
                     f"{steady} | {speedup} | {row['trainer_samples_per_second']:.1f} |")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    if summary["fastest_backend"] is None:
        return "No backend was measured."
    parts = [f"s = {item['proxyv_start_layer']}: time {_percent(item['prefill_time_reduction'])} vs FLOPs "
             f"{_percent(item['total_flops_reduction'])} ({_points(item['gap_points'])} pts)" for item in summary["rows"]]
    verdict = {True: "met", False: "NOT met", None: "not checked"}[summary["goal"]]
    return (f"Fastest backend (baseline prefill): {summary['fastest_backend']}. Goal (prefill time reduction within "
            f"{summary['goal_points']:.0f} points of the total FLOPs reduction): {verdict}. " + "; ".join(parts) + ".")


def _no_checkpointing_note(rows: list[dict]) -> str | None:
    shallow = sorted({(row["backend"], row["train_no_checkpointing"]["num_layers"]) for row in rows
                      if "num_layers" in (row.get("train_no_checkpointing") or {})})
    if not shallow:
        return None
    where = ", ".join(f"{backend} at {layers} layers" for backend, layers in shallow)
    return (f"Training without checkpointing was measured on a shallower model ({where}; start layers scaled, "
            "column 'layers (no ckpt)'): at full depth it ran out of memory or a shallower depth was asked for. "
            "Its time reduction compares rows of the same depth.")


def skipped_phases_note(rows: list[dict]) -> str | None:
    """Why phases shown as n/a did not run (OOM is said in its cell)."""
    reasons = sorted({(row["backend"], (row.get(phase) or {})["skipped"]) for row in rows for phase in PHASES
                      if "skipped" in (row.get(phase) or {}) and row[phase]["skipped"] != "out of memory"})
    if not reasons:
        return None
    return "n/a: " + "; ".join(f"{backend}: {reason}" for backend, reason in reasons) + "."


def format_markdown(result: dict) -> str:
    """The whole report: setting, the table, notes, the summary and the tiny training throughput."""
    setting = result["setting"]
    lines = [f"# GPU benchmark: {setting['model']}, {setting['num_layers']} layers, {setting['dtype']}, "
             f"{setting['device_name']}",
             "",
             f"{setting['text_tokens']} text tokens + {setting['crops']} crops ({setting['sequence_length']} tokens), "
             f"batch 1; torch {setting['torch']}, transformers {setting['transformers']}. Times: median "
             "(min-max) in ms; reductions against the baseline of the same backend; FLOPs: the whole prefill "
             "(vision tower, projector, decoder, LM head on the last token), counted on meta.",
             "", format_rows(result["rows"]), ""]
    for note in (_no_checkpointing_note(result["rows"]), skipped_phases_note(result["rows"])):
        if note:
            lines += [note, ""]
    lines += [format_summary(result["summary"]), ""]
    if result.get("mask_build"):
        lines += ["## Building the ProxyV attention mask (once per forward)", "", format_mask_build(result["mask_build"]),
                  ""]
    if result.get("tiny_training"):
        tiny = result["tiny_training"]
        lines += ["## Tiny end-to-end training (data loading included)", "",
                  f"{tiny['setting']['data']}; {tiny['setting']['precision']}; samples/s = "
                  f"{tiny['setting']['samples_per_second']}.", "", format_tiny_training(tiny), ""]
    return "\n".join(lines)


JSON_NAME, MARKDOWN_NAME = "gpu_benchmark.json", "gpu_benchmark.md"


def write_outputs(result: dict, folder: str) -> tuple[str, str]:
    """`folder`/gpu_benchmark.json and gpu_benchmark.md; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    json_path, markdown_path = os.path.join(folder, JSON_NAME), os.path.join(folder, MARKDOWN_NAME)
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    with open(markdown_path, "w", encoding="utf-8") as handle:
        handle.write(format_markdown(result))
    return json_path, markdown_path
