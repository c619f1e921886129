"""The robustness benchmark's reports: the side-by-side table (Markdown, CSV, JSON), its charts and TensorBoard."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from vit_mnist.data.digit_sets import DIGIT_SETS
from vit_mnist.reports.classification import tensorboard_writers
from vit_mnist.reports.figures import figure_to_array, robustness_examples_figure, robustness_figure, save_figure
from vit_mnist.reports.files import write_atomic, write_json

# `results` below are vit_mnist.robustness_suite.scoring.ModelResult, `suite` its CorruptionSpec list (that package
# sits above this one, so they are not imported here).
OUTPUT_FILES = ("robustness.md", "robustness.json", "robustness.csv", "robustness.png", "robustness_examples.png")


def _pct(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def robustness_markdown(results: Sequence[Any], suite: Sequence[Any], num_images: int,
                        seed: int) -> str:
    """The side-by-side table: accuracy (%) per corruption, clean, mCA, unseen mean, drops from clean."""
    names = [r.name for r in results]
    lines = ["# Robustness", "",
             f"Accuracy (%) on {num_images} official test images, clean and corrupted (seed {seed}). "
             "mCA: mean corruption accuracy over the corruptions below; unseen: the mean over those that resemble "
             "none of the model's training augmentations (a `*` marks a seen kind).", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| **clean** | " + " | ".join(f"**{_pct(r.clean)}**" for r in results) + " |")
    lines.append("| **mCA** | " + " | ".join(f"**{_pct(r.mca)}**" for r in results) + " |")
    lines.append("| **unseen mean** | " + " | ".join(f"**{_pct(r.unseen_mca)}**" for r in results) + " |")
    for name, (label, _) in _measured_sets(results).items():
        lines.append(f"| **{label}** | " + " | ".join(f"**{_pct(r.digit_sets.get(name))}**" for r in results) + " |")
    lines.append("| drop from clean | " + " | ".join(_pct(r.clean - r.mca) for r in results) + " |")
    for spec in suite:
        cells = [f"{_pct(r.accuracy[spec.name])}{'*' if spec.name in r.seen else ''}" for r in results]
        lines.append(f"| {spec.name} (s{spec.severity}) | " + " | ".join(cells) + " |")
    lines += ["", "| model | checkpoint | parameters | worst three |", "|---|---|---:|---|"]
    for r in results:
        worst = ", ".join(f"{k} {_pct(v)}" for k, v in r.worst())
        lines.append(f"| {r.name} | `{r.source}` | {r.num_parameters:,} | {worst} |")
    lines += ["", "Corruptions: " + "; ".join(f"{s.name} = {s.kind} at severity {s.severity} ({s.level}, {s.source})"
                                               for s in suite) + ".", ""]
    for label, description in _measured_sets(results).values():
        lines += [f"{label.capitalize()}: {description}; not part of mCA.", ""]
    return "\n".join(lines)


def _measured_sets(results: Sequence[Any]) -> dict[str, tuple[str, str]]:
    """The entries of DIGIT_SETS that some model was scored on."""
    return {k: v for k, v in DIGIT_SETS.items() if any(k in r.digit_sets for r in results)}


def robustness_csv(results: Sequence[Any], suite: Sequence[Any]) -> str:
    """Rows: clean, mca, unseen_mca, then each corruption; one accuracy column per model (fractions)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["corruption", "severity", "source", *[r.name for r in results]])
    writer.writerow(["clean", "", "", *[f"{r.clean:.6f}" for r in results]])
    writer.writerow(["mca", "", "", *[f"{r.mca:.6f}" for r in results]])
    writer.writerow(["unseen_mca", "", "", *[f"{r.unseen_mca:.6f}" for r in results]])
    for name in _measured_sets(results):
        writer.writerow([name, "", "deployment", *["" if r.digit_sets.get(name) is None
                                                   else f"{r.digit_sets[name]:.6f}" for r in results]])
    for spec in suite:
        writer.writerow([spec.name, spec.severity, spec.source, *[f"{r.accuracy[spec.name]:.6f}" for r in results]])
    return buffer.getvalue()


def robustness_json(results: Sequence[Any], suite: Sequence[Any], num_images: int, seed: int
                    ) -> dict[str, Any]:
    return {
        "num_images": num_images, "seed": seed,
        "corruptions": [{"name": s.name, "kind": s.kind, "severity": s.severity, "level": s.level,
                         "source": s.source, "seen_with": list(s.seen_with)} for s in suite],
        "models": [r.summary() for r in results],
    }


def write_reports(results: Sequence[Any], suite: Sequence[Any], shown: dict[str, torch.Tensor],
                  out_dir: Path, class_names: list[str], num_images: int, seed: int, loggers: Sequence[Any] = (),
                  step: int = 0) -> dict[str, Path]:
    """robustness.md/.json/.csv, the bar chart and the examples figure into `out_dir`, and TensorBoard entries."""
    paths = {name: out_dir / name for name in OUTPUT_FILES}
    markdown = robustness_markdown(results, suite, num_images, seed)
    write_json(paths["robustness.json"], robustness_json(results, suite, num_images, seed))
    write_atomic(paths["robustness.csv"], robustness_csv(results, suite))
    write_atomic(paths["robustness.md"], markdown)
    save_figure(robustness_figure(results, [s.name for s in suite]), paths["robustness.png"])
    save_figure(robustness_examples_figure(shown, results[0], class_names), paths["robustness_examples.png"])
    for writer in tensorboard_writers(list(loggers)):
        for r in results:
            prefix = "robustness" if len(results) == 1 else f"robustness/{r.name}"
            writer.add_scalar(f"{prefix}/clean", r.clean, step)
            writer.add_scalar(f"{prefix}/mca", r.mca, step)
            writer.add_scalar(f"{prefix}/unseen_mca", r.unseen_mca, step)
            for name, acc in r.digit_sets.items():
                writer.add_scalar(f"{prefix}/{name}", acc, step)
            for name, acc in r.accuracy.items():
                writer.add_scalar(f"{prefix}/acc/{name}", acc, step)
        writer.add_image("robustness/accuracy", figure_to_array(paths["robustness.png"]), step, dataformats="HWC")
        writer.add_image("robustness/examples", figure_to_array(paths["robustness_examples.png"]), step,
                         dataformats="HWC")
        writer.add_text("robustness/table", markdown, step)
        writer.flush()
    return paths


def print_results(results: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Robustness (accuracy %)")
    table.add_column("")
    for r in results:
        table.add_column(r.name, justify="right")
    for label, fn in (("clean", lambda r: r.clean), ("mCA", lambda r: r.mca), ("unseen mean", lambda r: r.unseen_mca)):
        table.add_row(label, *[_pct(fn(r)) for r in results])
    for name, (label, _) in _measured_sets(results).items():
        table.add_row(label, *[_pct(r.digit_sets.get(name)) for r in results])
    for name in results[0].accuracy:
        table.add_row(name, *[_pct(r.accuracy[name]) + ("*" if name in r.seen else "") for r in results])
    Console().print(table)
