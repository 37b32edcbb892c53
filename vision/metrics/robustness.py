"""The robustness report: per-model summaries written as JSON, CSV, a markdown table and a PNG plot.

A report is a plain dict (``build_report``), so the files are views of one structure: the JSON
holds all of it, the CSV one row per number (long format), the markdown the tables a reader
wants, the PNG the mean error of each corruption group against severity, one line per model.
Errors are fractions in the JSON and CSV, percentages in the markdown and the plot.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vision.corruptions.params import ALL, COMMON, GROUPS, HOLDOUT
from vision.files import atomic_write
from vision.metrics.corruption import (
    ALEXNET,
    SEVERITIES,
    CorruptionBaseline,
    corruption_error,
    relative_corruption_error,
    summarize_corruption_errors,
)

NATURAL_SHIFT = ("imagenet-r", "imagenet-a", "imagenet-sketch", "imagenet-v2")
REPORT_FILES = ("robustness.json", "robustness.csv", "robustness.md", "robustness.png")


def group_of(name: str) -> str:
    """The report group of a corruption: noise, blur, weather, digital, or hold-out."""
    return next(group for group, names in GROUPS.items() if name in names)


def summarize_errors(errors: Mapping[tuple[str, int], float], clean_error: float | None, *,
                     baseline: CorruptionBaseline | None = ALEXNET) -> dict[str, Any]:
    """Mean error, hold-out error and (with a baseline) CE, mCE and relative mCE from {(corruption, severity): error}.

    All 15 benchmark corruptions at severities 1-5 (hold-out all or none) give the full
    ``summarize_corruption_errors`` result. A partial set still gets the plain means over what
    was evaluated, and CE for each corruption evaluated at all five severities; mCE and relative
    mCE stay None, with a note saying why.
    """
    complete = all((c, s) in errors for c in COMMON for s in SEVERITIES)
    holdout_given = [(c, s) for c in HOLDOUT for s in SEVERITIES if (c, s) in errors]
    if complete and len(holdout_given) in (0, len(HOLDOUT) * len(SEVERITIES)):
        out = summarize_corruption_errors(errors, clean_error, baseline=baseline).to_dict()
        del out["errors"], out["clean_error"]  # kept per severity, and once, by the caller
        out["complete"] = True
        return out
    names = [c for c in ALL if any((c, s) in errors for s in SEVERITIES)]
    per = {c: [errors[(c, s)] for s in SEVERITIES if (c, s) in errors] for c in names}
    common = [errors[(c, s)] for c in COMMON for s in SEVERITIES if (c, s) in errors]
    out: dict[str, Any] = {
        "mean_errors": {c: sum(v) / len(v) for c, v in per.items()},
        "mean_corruption_error": sum(common) / len(common) if common else None,
        "ce": None, "mce": None, "relative_ce": None, "relative_mce": None,
        "holdout_error": (sum(errors[k] for k in holdout_given) / len(holdout_given)) if holdout_given else None,
        "holdout_ce": None, "baseline": None, "complete": False,
        "notes": [("partial evaluation: mCE and relative mCE need all 15 corruptions at severities 1-5; "
                   "the mean errors are over the corruptions and severities evaluated")],
    }
    full = [c for c in COMMON if len(per.get(c, ())) == len(SEVERITIES)]
    if baseline is not None and full:
        out["baseline"] = baseline.label
        out["ce"] = {c: corruption_error(per[c], baseline.errors[c]) for c in full}
        if clean_error is not None:
            out["relative_ce"] = {c: relative_corruption_error(per[c], clean_error, baseline.errors[c],
                                                               baseline.clean_error) for c in full}
    return out


# ---- building the report -------------------------------------------------------------------------

def model_entry(description: Mapping[str, Any], clean: tuple[float, int] | None,
                errors: Mapping[tuple[str, int], tuple[float, int]], natural: Mapping[str, Mapping[str, Any]], *,
                baseline: CorruptionBaseline | None) -> dict[str, Any]:
    """One model's part of the report.

    Args:
        description: the model's JSON-ready description (label, checkpoint, ...).
        clean: (error, images) on the clean set, or None without one.
        errors: {(corruption, severity): (error, images)}.
        natural: {set name: {"accuracy": ..., "images": ..., optional "clean_accuracy_same_classes": ...}}.
        baseline: the CE normaliser (AlexNet at ImageNet scale), or None (plain mean errors only).
    """
    clean_error = clean[0] if clean else None
    entry: dict[str, Any] = dict(description)
    entry["clean"] = {"error": clean[0], "accuracy": 1 - clean[0], "images": clean[1]} if clean else None
    entry["errors"] = {c: {str(s): errors[(c, s)][0] for s in SEVERITIES if (c, s) in errors}
                       for c in ALL if any((c, s) in errors for s in SEVERITIES)}
    entry["images"] = {c: {str(s): errors[(c, s)][1] for s in SEVERITIES if (c, s) in errors}
                       for c in entry["errors"]}
    summary = summarize_errors({k: v[0] for k, v in errors.items()}, clean_error, baseline=baseline) if errors else None
    if summary is not None and summary["mean_corruption_error"] is not None:
        summary["corrupted_accuracy"] = 1 - summary["mean_corruption_error"]
    entry["corruption_summary"] = summary
    entry["natural_shift"] = {name: dict(natural[name]) for name in NATURAL_SHIFT if name in natural}
    return entry


def build_report(title: str, settings: Mapping[str, Any], models: Sequence[Mapping[str, Any]],
                 corruptions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole report: a title, the settings, one entry per model, the evaluated corruptions' notes."""
    return {"title": title, "settings": dict(settings), "models": list(models), "corruptions": list(corruptions)}


# ---- writing it ----------------------------------------------------------------------------------

def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report_csv(report: Mapping[str, Any]) -> str:
    """One row per number: model, metric, condition, group, severity, value, images."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "metric", "condition", "group", "severity", "value", "images"])
    for m in report["models"]:
        label = m["label"]
        if m["clean"]:
            writer.writerow([label, "error", "clean", "clean", "", repr(m["clean"]["error"]), m["clean"]["images"]])
        for c, by_severity in m["errors"].items():
            for s, value in by_severity.items():
                writer.writerow([label, "error", c, group_of(c), s, repr(value), m["images"][c][s]])
        summary = m["corruption_summary"]
        if summary:
            for metric in ("mean_errors", "ce", "relative_ce", "holdout_ce"):
                for c, value in (summary.get(metric) or {}).items():
                    name = "mean_error" if metric == "mean_errors" else metric
                    writer.writerow([label, name, c, group_of(c), "", repr(value), ""])
            for metric in ("mean_corruption_error", "corrupted_accuracy", "holdout_error", "mce", "relative_mce"):
                if summary.get(metric) is not None:
                    writer.writerow([label, metric, "all", "", "", repr(summary[metric]), ""])
        for name, values in m["natural_shift"].items():
            writer.writerow([label, "accuracy", name, "natural shift", "", repr(values["accuracy"]), values["images"]])
            if values.get("clean_accuracy_same_classes") is not None:
                writer.writerow([label, "clean_accuracy_same_classes", name, "natural shift", "",
                                 repr(values["clean_accuracy_same_classes"]), values.get("clean_images_same_classes")])
    return buffer.getvalue()


def report_markdown(report: Mapping[str, Any]) -> str:
    """The summary table, natural-shift accuracies, mean error per corruption, and error per severity."""
    models = report["models"]
    settings = report["settings"]
    lines = [f"## {report['title']}", ""]
    if settings.get("description"):
        lines += [settings["description"], ""]
    summaries = [m["corruption_summary"] or {} for m in models]
    imagenet = any(s.get("baseline") for s in summaries)
    header = ["model", "clean err %", "mean corruption err %", "hold-out err %"]
    if imagenet:
        header += ["mCE", "relative mCE"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m, s in zip(models, summaries):
        row = [m["label"], _pct(m["clean"]["error"] if m["clean"] else None), _pct(s.get("mean_corruption_error")),
               _pct(s.get("holdout_error"))]
        if imagenet:
            row += [_num(s.get("mce")), _num(s.get("relative_mce"))]
        lines.append("| " + " | ".join(row) + " |")
    notes = list(settings.get("notes", [])) + sorted({note for s in summaries for note in s.get("notes", [])})
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    shifts = [name for name in NATURAL_SHIFT if any(name in m["natural_shift"] for m in models)]
    if shifts:
        header = ["model", "clean acc %", "corrupted acc %"]
        for name in shifts:
            header.append(f"{name} acc %")
            if any(m["natural_shift"].get(name, {}).get("clean_accuracy_same_classes") is not None for m in models):
                header.append(f"clean acc % ({name} classes)")
        lines += ["", "Accuracy under natural distribution shift, next to clean and corrupted accuracy:", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m, s in zip(models, summaries):
            row = [m["label"], _pct(m["clean"]["accuracy"] if m["clean"] else None), _pct(s.get("corrupted_accuracy"))]
            for name in shifts:
                values = m["natural_shift"].get(name, {})
                row.append(_pct(values.get("accuracy")))
                if any(o["natural_shift"].get(name, {}).get("clean_accuracy_same_classes") is not None for o in models):
                    row.append(_pct(values.get("clean_accuracy_same_classes")))
            lines.append("| " + " | ".join(row) + " |")
    names = [c for c in ALL if any(c in m["errors"] for m in models)]
    if names:
        with_ce = any(s.get("ce") for s in summaries)
        header = ["corruption", "group"] + [m["label"] + (" err % (CE)" if with_ce else " err %") for m in models]
        title = "Mean error over severities per corruption" + (" (CE: AlexNet-normalised, %):" if with_ce else ":")
        lines += ["", title,
                  "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in names:
            row = [c, group_of(c)]
            for s in summaries:
                cell = _pct((s.get("mean_errors") or {}).get(c))
                ce = (s.get("ce") or {}).get(c, (s.get("holdout_ce") or {}).get(c))
                row.append(cell + (f" ({100 * ce:.1f})" if ce is not None else ""))
            lines.append("| " + " | ".join(row) + " |")
        levels = [s for s in SEVERITIES if any(str(s) in v for m in models for v in m["errors"].values())]
        header = ["corruption"] + [f"{m['label']} s{s}" for m in models for s in levels]
        lines += ["", "Error % per severity:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in names:
            row = [c] + [_pct(m["errors"].get(c, {}).get(str(s))) for m in models for s in levels]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def group_curves(entry: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """Mean error of each corruption group per severity, over the group's corruptions evaluated at it."""
    curves: dict[str, dict[int, float]] = {}
    for group, names in GROUPS.items():
        for s in SEVERITIES:
            values = [entry["errors"][c][str(s)] for c in names if str(s) in entry["errors"].get(c, {})]
            if values:
                curves.setdefault(group, {})[s] = sum(values) / len(values)
    return curves


def plot_report(report: Mapping[str, Any], path: str | Path) -> None:
    """PNG: one panel per corruption group, error % against severity (0 = clean), one line per model."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    curves = [group_curves(m) for m in report["models"]]
    groups = [g for g in GROUPS if any(g in c for c in curves)]
    if not groups:
        raise ValueError("nothing to plot: the report has no corruption errors")
    fig = Figure(figsize=(3.2 * len(groups), 3.4), dpi=120, layout="constrained")
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(report["models"]))]
    for ax, group in zip(axes, groups):
        for m, curve, color in zip(report["models"], curves, colors):
            points = sorted(curve.get(group, {}).items())
            if m["clean"]:
                points = [(0, m["clean"]["error"])] + points
            if points:
                ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", color=color, label=m["label"])
        evaluated = [c for c in GROUPS[group] if any(c in m["errors"] for m in report["models"])]
        ax.set_title(f"{group} (mean of {len(evaluated)})", fontsize=10)
        ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
        ax.set_xlabel("severity")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 error %")
    axes[0].legend(fontsize=8)
    fig.suptitle(report["title"], fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_report(report: Mapping[str, Any], out: str | Path) -> dict[str, Path]:
    """Write robustness.json, .csv, .md (and .png when there are corruption errors) into ``out``, atomically."""
    folder = Path(out)
    paths = {suffix: folder / f"robustness.{suffix}" for suffix in ("json", "csv", "md", "png")}
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    atomic_write(paths["csv"], lambda tmp: Path(tmp).write_text(report_csv(report)))
    atomic_write(paths["md"], lambda tmp: Path(tmp).write_text(report_markdown(report)))
    if any(m["errors"] for m in report["models"]):
        plot_report(report, paths["png"])
    else:
        del paths["png"]
    return paths
