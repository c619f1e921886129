"""Test reports: the classification report, its files (Markdown, JSON, CSV, PNG) and its TensorBoard entries."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from vit_mnist.models.registry import MAP_TITLES
from vit_mnist.reports.figures import (
    attention_figure,
    calibration_figure,
    confusion_figure,
    figure_to_array,
    misclassified_figure,
    save_figure,
)
from vit_mnist.reports.files import write_atomic, write_json
from vit_mnist.reports.samples import CALIBRATION_BINS

REPORT_FILES = ("classification_report.md", "classification_report.json", "confusion_matrix.png",
                "confusion_matrix.csv", "misclassified.png", "calibration.png", "attention.png")


def build_report(probs: torch.Tensor, targets: torch.Tensor, class_names: list[str],
                 n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """The classification report of predicted class probabilities (N, K) against labels (N,), via torchmetrics:
    per-class precision, recall, F1 and support; their macro and weighted averages; accuracy; calibration error."""
    k = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != k or len(probs) != len(targets) or len(targets) == 0:
        raise ValueError(f"need probs (N, {k}) and targets (N,) with N > 0, got {tuple(probs.shape)} and "
                         f"{tuple(targets.shape)}")
    probs, targets = probs.float(), targets.long()
    scores = {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score}
    per_class = {name: fn(probs, targets, k, average=None).tolist() for name, fn in scores.items()}
    support = torch.bincount(targets, minlength=k).tolist()
    report: dict[str, Any] = {
        "num_samples": len(targets),
        "accuracy": float(multiclass_accuracy(probs, targets, k, average="micro")),
        "ece": float(multiclass_calibration_error(probs, targets, k, n_bins=n_bins, norm="l1")),
        "calibration_bins": n_bins,
        "classes": {name: {**{s: round(per_class[s][i], 6) for s in scores}, "support": support[i]}
                    for i, name in enumerate(class_names)},
    }
    for average in ("macro", "weighted"):
        report[f"{average} avg"] = {
            **{s: round(float(fn(probs, targets, k, average=average)), 6) for s, fn in scores.items()},
            "support": len(targets),
        }
    report["confusion_matrix"] = multiclass_confusion_matrix(probs, targets, k).tolist()
    return report


def _report_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = [(name, *(f"{v[s]:.4f}" for s in ("precision", "recall", "f1")), str(v["support"]))
            for name, v in report["classes"].items()]
    for average in ("macro avg", "weighted avg"):
        v = report[average]
        rows.append((average, *(f"{v[s]:.4f}" for s in ("precision", "recall", "f1")), str(v["support"])))
    return rows


def report_markdown(report: dict[str, Any], title: str = "Classification report") -> str:
    """The report as a Markdown table (for the .md file and TensorBoard's text tab)."""
    lines = [f"# {title}", "", "| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in _report_rows(report)]
    lines += ["", f"- accuracy: {report['accuracy']:.4f} ({report['num_samples']} images)",
              f"- expected calibration error: {report['ece']:.4f} ({report['calibration_bins']} bins)"]
    if "ece_raw" in report:
        lines.append(f"- before calibration (temperature 1): {report['ece_raw']:.4f}; the probabilities above are "
                     f"softmax(logits / {report['temperature']:.4g})")
    return "\n".join(lines + [""])


def print_report(report: dict[str, Any], title: str = "Classification report") -> None:
    """The report as a rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    raw = f" (before calibration {report['ece_raw']:.4f})" if "ece_raw" in report else ""
    table = Table(title=title, caption=f"accuracy {report['accuracy']:.4f} on {report['num_samples']} images, "
                                       f"ECE {report['ece']:.4f}{raw}")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    rows = _report_rows(report)
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=i == len(rows) - 3)
    Console().print(table)


def summary_metrics(callback_metrics: dict[str, Any], results: dict[str, torch.Tensor], prefix: str = "test") -> dict[str, Any]:
    """The `<prefix>/...` entries of metrics.json: the logged scalars and the per-class scores."""
    metrics: dict[str, Any] = {k: float(v) for k, v in callback_metrics.items() if k.startswith(f"{prefix}/")}
    for key in ("precision", "recall", "f1"):
        metrics[f"{prefix}/{key}_per_class"] = [round(float(x), 6) for x in results[key]]
    if "temperature" in results:  # the probabilities were softmax(logits / temperature)
        metrics["calibration/temperature"] = float(results["temperature"])
    return metrics


def calibration_summary(raw_probs: torch.Tensor, targets: torch.Tensor, temperature: Any,
                        n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """The report's entries for the probabilities before temperature scaling: their ECE, and the temperature."""
    k = raw_probs.shape[1]
    return {"ece_raw": float(multiclass_calibration_error(raw_probs.float(), targets.long(), k, n_bins=n_bins,
                                                          norm="l1")),
            "temperature": float(temperature) if temperature is not None else 1.0}


def tensorboard_writers(loggers: Sequence[Any]) -> list[Any]:
    """The SummaryWriters of any TensorBoard loggers in the list."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def write_confusion_csv(path: Path, matrix: torch.Tensor, class_names: list[str]) -> None:
    """Rows are true classes, columns predicted classes, as counts."""
    rows = [["true\\pred", *class_names]]
    rows += [[name, *map(int, row)] for name, row in zip(class_names, matrix.tolist())]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    write_atomic(path, buffer.getvalue())


def write_test_reports(
    results: dict[str, torch.Tensor],
    out_dir: str | Path,
    class_names: list[str],
    loggers: Sequence[Any] = (),
    step: int = 0,
    split: str = "test",
    map_title: str = MAP_TITLES["vit"],
    figures: bool = True,
) -> dict[str, Path]:
    """Write every report file into `out_dir`, log the images and the report to TensorBoard under `<split>/`,
    print the report; return the files' paths. Used by both the training run's test stage and evaluate.
    attention.png shows the model's relevance maps, titled `map_title` (the module's `map_title`). figures=False
    (search trials): the report, its markdown and the confusion matrix's CSV only, not the four figures."""
    out_dir = Path(out_dir)
    paths = {name.replace(".", "_"): out_dir / name for name in REPORT_FILES}
    probs, targets = results["probs"], results["targets"]
    report = {"split": split, **build_report(probs, targets, class_names)}
    raw_probs = results.get("raw_probs")
    if raw_probs is not None:  # before and after temperature scaling
        report.update(calibration_summary(raw_probs, targets, results.get("temperature"), report["calibration_bins"]))
    title = f"Classification report ({split} split)"
    markdown = report_markdown(report, title)
    write_json(paths["classification_report_json"], report)
    write_atomic(paths["classification_report_md"], markdown)

    matrix = torch.tensor(report["confusion_matrix"], device="cpu")
    write_confusion_csv(paths["confusion_matrix_csv"], matrix, class_names)
    if not figures:
        for writer in tensorboard_writers(list(loggers)):
            writer.add_text(f"{split}/classification_report", markdown, step)
        print_report(report, title)
        return {k: v for k, v in paths.items() if not k.endswith("_png")}
    save_figure(confusion_figure(matrix, class_names), paths["confusion_matrix_png"])
    empty = torch.empty(0, device="cpu")
    save_figure(misclassified_figure(results.get("wrong_images", empty), results.get("wrong_targets", empty),
                                     results.get("wrong_preds", empty), results.get("wrong_confidence", empty),
                                     class_names), paths["misclassified_png"])
    save_figure(calibration_figure(probs, targets, report["ece"], report["calibration_bins"], raw_probs,
                                   report.get("ece_raw"), report.get("temperature")), paths["calibration_png"])
    save_figure(attention_figure(results.get("example_images", empty), results.get("example_maps", empty),
                                 results.get("example_targets", empty), results.get("example_preds", empty),
                                 class_names, map_title), paths["attention_png"])

    for writer in tensorboard_writers(list(loggers)):
        for name in ("confusion_matrix", "misclassified", "calibration", "attention"):
            writer.add_image(f"{split}/{name}", figure_to_array(paths[f"{name}_png"]), step, dataformats="HWC")
        writer.add_text(f"{split}/classification_report", markdown, step)
        writer.flush()
    print_report(report, title)
    return paths
