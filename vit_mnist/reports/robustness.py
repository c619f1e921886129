"""The robustness benchmark's reports: the side-by-side table (Markdown, CSV, JSON), its charts and TensorBoard, and
the out-of-domain section (its own table, ood.csv and ood.png)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from vit_mnist.data.digit_sets import DIGIT_SETS
from vit_mnist.data.non_digits import NON_DIGIT_SETS
from vit_mnist.ood.scores import SCORES
from vit_mnist.reports.classification import tensorboard_writers
from vit_mnist.reports.figures import (
    figure_to_array,
    robustness_examples_figure,
    robustness_figure,
    save_figure,
)
from vit_mnist.reports.files import write_atomic, write_json

# `results` below are vit_mnist.robustness_suite.scoring.ModelResult, `suite` its CorruptionSpec list (that package
# sits above this one, so they are not imported here).
OUTPUT_FILES = ("robustness.md", "robustness.json", "robustness.csv", "robustness.png", "robustness_examples.png")
OOD_FILES = ("ood.csv", "ood.png")  # when a model was given an out-of-domain detector
OOD_SCORES = tuple(SCORES)  # every registered score, in its order


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
    return "\n".join(lines + per_class_markdown(results) + ece_markdown(results)) + ood_markdown(results)


def ece_markdown(results: Sequence[Any]) -> list[str]:
    """Expected calibration error under shift: are the calibrated probabilities still honest off the test set?"""
    if not any(r.ece for r in results):
        return []
    names = [r.name for r in results]
    sets = [name for name in ("clean", *_measured_sets(results)) if any(name in r.ece for r in results)]
    labels = {"clean": "clean", **{k: label for k, (label, _) in _measured_sets(results).items()}}
    lines = ["## Calibration under shift", "",
             "Expected calibration error of the calibrated probabilities (15 bins; 0 is perfectly honest) on the "
             "clean images, the mean over the corruptions and each digit set.", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| corrupted (mean) | " + " | ".join(_num(r.corrupted_ece) for r in results) + " |")
    for name in sets:
        lines.append(f"| {labels[name]} | " + " | ".join(_num(r.ece.get(name)) for r in results) + " |")
    return lines + [""]


def per_class_markdown(results: Sequence[Any]) -> list[str]:
    """Accuracy (%) per true class on each digit set from outside MNIST: which digits a model misreads there."""
    sets = {name: label for name, (label, _) in _measured_sets(results).items()
            if any(r.digit_sets_per_class.get(name) for r in results)}
    if not sets:
        return []
    classes = len(next(r.digit_sets_per_class[name] for name in sets for r in results
                       if r.digit_sets_per_class.get(name)))
    lines = ["## Per digit", "", "Accuracy (%) on each true digit of the sets from outside MNIST.", "",
             "| set | model | " + " | ".join(str(c) for c in range(classes)) + " |", "|---|---|" + "---:|" * classes]
    for name, label in sets.items():
        for r in results:
            if values := r.digit_sets_per_class.get(name):
                lines.append(f"| {label} | {r.name} | " + " | ".join(_pct(v) for v in values) + " |")
    return lines + [""]


def _with_ood(results: Sequence[Any]) -> list[Any]:
    return [r for r in results if getattr(r, "ood", None) is not None]


def _digit_rows(results: Sequence[Any]) -> list[tuple[str, str]]:
    """(key in OODResult.out_of_domain, label) of the digit sets measured: clean, corrupted (mean), the others."""
    keys = [k for k in _with_ood(results)[0].ood.out_of_domain if not k.startswith("corrupt/")]
    rows = [("clean", "clean test images")]
    if any(k.startswith("corrupt/") for k in _with_ood(results)[0].ood.out_of_domain):
        rows.append(("corrupted", "corrupted (mean over the corruptions)"))
    return rows + [(k, DIGIT_SETS[k][0] if k in DIGIT_SETS else k) for k in keys if k != "clean"]


def _rejected(ood: Any, key: str, kind: str = "out_of_domain") -> float | None:
    if key == "corrupted":
        return ood.corrupted_out_of_domain if kind == "out_of_domain" else _mean(
            [v for k, v in ood.unsure.items() if k.startswith("corrupt/")])
    return getattr(ood, kind).get(key)


def _most_rejected(ood: Any, count: int = 3) -> str:
    """The corruptions whose digits the detector rejects most: where the corrupted mean comes from."""
    shares = sorted(((v, k.removeprefix("corrupt/")) for k, v in ood.out_of_domain.items() if k.startswith("corrupt/")),
                    reverse=True)
    return ", ".join(f"{name} {_pct(v)}" for v, name in shares[:count])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _num(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def ood_markdown(results: Sequence[Any]) -> str:
    """The out-of-domain section: per non-digit set AUROC and share accepted at 99% digit acceptance; the digits
    each detector marks out_of_domain and unsure; the scores compared. Empty when no model had a detector."""
    models = _with_ood(results)
    if not models:
        return ""
    sets = list(models[0].ood.auroc)
    head = ["| | " + " | ".join(r.name for r in models) + " |", "|---|" + "---:|" * len(models)]
    lines = ["", "## Out of domain", "",
             "How well each model tells the clean test images from images of another kind (the sets below), by its "
             "detector's outlier score: the AUROC (1: every outsider scores above every clean image; 0.5: chance), "
             "and the share of each set still accepted when the threshold accepts 99% of the clean test images. "
             "Then the share of in-domain images that the detector, with its thresholds fixed on validation data, "
             "marks `out_of_domain` (a hard digit should be `unsure`, not rejected) or `unsure`.", "", *head,
             "| score | " + " | ".join(r.ood.score for r in models) + " |",
             "| **mean AUROC** | " + " | ".join(f"**{_num(r.ood.mean_auroc)}**" for r in models) + " |"]
    label = {k: NON_DIGIT_SETS.get(k, (k,))[0] for k in sets}
    lines += [f"| {label[k]}: AUROC | " + " | ".join(_num(r.ood.auroc.get(k)) for r in models) + " |" for k in sets]
    lines += [f"| {label[k]}: accepted at 99% (%) | " + " | ".join(_pct(r.ood.accepted.get(k)) for r in models) + " |"
              for k in sets]
    for kind in ("out_of_domain", "unsure"):
        lines += [f"| {name}: `{kind}` (%) | " + " | ".join(_pct(_rejected(r.ood, key, kind)) for r in models) + " |"
                  for key, name in _digit_rows(results)]
    if any(k.startswith("corrupt/") for r in models for k in r.ood.out_of_domain):
        lines.append("| corruptions most often `out_of_domain` (%) | " + " | ".join(_most_rejected(r.ood)
                                                                              for r in models) + " |")
    if any(r.ood.others for r in models):
        lines += ["", "Each score, its threshold fixed on the same validation images (the detector's own in bold; the "
                      "choice: docs/out_of_domain.md). AUROC: mean and lowest over the sets; accepted: mean share of "
                      "the sets accepted at 99% acceptance of the clean test images; then the in-domain images marked "
                      "`out_of_domain` (%):", "",
                  "| model | score | mean AUROC | lowest AUROC | accepted at 99% (%) | "
                  + " | ".join(name for _, name in _digit_rows(results)) + " |",
                  "|---|---|---:|---:|---:|" + "---:|" * len(_digit_rows(results))]
        for r in models:
            for score in [s for s in OOD_SCORES if s == r.ood.score or s in r.ood.others]:
                o = r.ood if score == r.ood.score else r.ood.others[score]
                low = min(o.auroc.values()) if o.auroc else math.nan
                cells = [_num(o.mean_auroc), _num(low), _pct(_mean(list(o.accepted.values()))),
                         *[_pct(_rejected(o, key)) for key, _ in _digit_rows(results)]]
                if score == r.ood.score:
                    cells = [f"**{c}**" for c in cells]
                lines.append(f"| {r.name} | {score} | " + " | ".join(cells) + " |")
    lines += ["", "| model | detector | thresholds |", "|---|---|---|"]
    for r in models:
        t = r.ood.thresholds
        flat = f" or a top-1 probability below {t['flat']:.4g}" if t.get("flat") else ""
        lines.append(f"| {r.name} | {r.ood.source} | out_of_domain above {t['out_of_domain']:.4g}{flat}; unsure below "
                     f"a top-1 probability of {t['unsure']:.4g} |")
    lines += ["", "Sets: " + "; ".join(f"{label[k]} = {NON_DIGIT_SETS[k][1]} ({models[0].ood.sizes.get(k, 0)} images)"
                                       for k in sets if k in NON_DIGIT_SETS) + "."]
    notes = list(dict.fromkeys(n for r in models for n in r.ood.notes))
    return "\n".join(lines + ([""] + notes if notes else []) + [""])


def ood_csv(results: Sequence[Any]) -> str:
    """Rows (set, measure), one column per model with a detector: AUROC and accepted share per non-digit set (and
    each score's AUROC), then the shares of each digit set marked out_of_domain and unsure (fractions)."""
    models = _with_ood(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["set", "measure", *[r.name for r in models]])
    sets = list(models[0].ood.auroc) if models else []

    def fmt(v: float | None) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"

    writer.writerow(["mean", "auroc", *[fmt(r.ood.mean_auroc) for r in models]])
    for k in sets:
        writer.writerow([k, "auroc", *[fmt(r.ood.auroc.get(k)) for r in models]])
        writer.writerow([k, "accepted_at_99", *[fmt(r.ood.accepted.get(k)) for r in models]])
        writer.writerow([k, "accepted_at_threshold", *[fmt(r.ood.accepted_at_threshold.get(k)) for r in models]])
        for s in OOD_SCORES:  # every score compared, its own threshold fixed on the same images
            if any(s in r.ood.others for r in models):
                by_score = [r.ood if r.ood.score == s else r.ood.others.get(s) for r in models]
                writer.writerow([k, f"auroc_{s}", *[fmt(o.auroc.get(k) if o else None) for o in by_score]])
                writer.writerow([k, f"accepted_at_99_{s}", *[fmt(o.accepted.get(k) if o else None) for o in by_score]])
    for kind in ("out_of_domain", "unsure"):
        for key, _ in (_digit_rows(results) if models else []):
            writer.writerow([key, kind, *[fmt(_rejected(r.ood, key, kind)) for r in models]])
    return buffer.getvalue()


def ood_figure(results: Sequence[Any]) -> plt.Figure:
    """Per non-digit set, each model's AUROC and the share it accepts at 99% digit acceptance, as bars."""
    models = _with_ood(results)
    sets = list(models[0].ood.auroc)
    labels = [NON_DIGIT_SETS.get(k, (k,))[0] for k in sets] + ["mean"]
    y, height = np.arange(len(labels)), 0.8 / len(models)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.4 * len(labels) * max(1.0, 0.6 * len(models)) + 1.4),
                                      sharey=True, constrained_layout=True)
    for i, r in enumerate(models):
        offset = y + (i - (len(models) - 1) / 2) * height
        left.barh(offset, [*[r.ood.auroc[k] for k in sets], r.ood.mean_auroc], height=height,
                  label=f"{r.name} ({r.ood.score})")
        right.barh(offset, [*[100 * r.ood.accepted[k] for k in sets], 100 * _mean(list(r.ood.accepted.values()))],
                   height=height)
    left.set_yticks(y, labels)
    left.invert_yaxis()
    lowest = min(min(r.ood.auroc.values()) for r in models)
    left.set_xlim(max(0.5, math.floor(20 * lowest - 0.5) / 20), 1.0)  # 0.05 steps: the differences near 1 show
    left.set_xlabel("AUROC: clean test images vs the set")
    right.set_xlabel("accepted at 99% acceptance of clean test images (%)")
    right.set_xlim(0, 100)
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    handles, names = left.get_legend_handles_labels()
    right.legend(handles, names, loc="lower right", fontsize=8)
    fig.suptitle("Out of domain: telling the model's own kind of image from others")
    return fig


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
        "non_digit_sets": {k: {"label": label, "description": description}
                           for k, (label, description) in NON_DIGIT_SETS.items()
                           if any(k in r.ood.auroc for r in _with_ood(results))},
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
    with_ood = _with_ood(results)
    if with_ood and with_ood[0].ood.auroc:
        paths.update({name: out_dir / name for name in OOD_FILES})
        write_atomic(paths["ood.csv"], ood_csv(results))
        save_figure(ood_figure(results), paths["ood.png"])
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
            if r.ood is not None:
                for name, value in r.ood.metrics("").items():  # ood_auroc, ood_auroc/<set>, ood_rejected/<set>...
                    if not math.isnan(value):
                        writer.add_scalar(f"{prefix}/{name}", value, step)
        writer.add_image("robustness/accuracy", figure_to_array(paths["robustness.png"]), step, dataformats="HWC")
        writer.add_image("robustness/examples", figure_to_array(paths["robustness_examples.png"]), step,
                         dataformats="HWC")
        if "ood.png" in paths:
            writer.add_image("robustness/ood", figure_to_array(paths["ood.png"]), step, dataformats="HWC")
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
    if _with_ood(results):
        table.add_row("out of domain: AUROC x100",
                      *[_pct(r.ood.mean_auroc) if r.ood is not None else "–" for r in results])
    for name in results[0].accuracy:
        table.add_row(name, *[_pct(r.accuracy[name]) + ("*" if name in r.seen else "") for r in results])
    Console().print(table)
