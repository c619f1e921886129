"""Files and TensorBoard entries made from test results: metrics.json, confusion matrix PNG and CSV."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def write_atomic(path: Path, text: str) -> None:
    """Write text to `path` through a temporary file, so a crash never leaves it half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_confusion_csv(path: Path, matrix: torch.Tensor, class_names: list[str]) -> None:
    """Rows are true classes, columns predicted classes, as counts."""
    rows = [["true\\pred", *class_names]]
    rows += [[name, *map(int, row)] for name, row in zip(class_names, matrix.tolist())]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def confusion_figure(matrix: torch.Tensor, class_names: list[str], title: str = "Confusion matrix") -> plt.Figure:
    """Two panels: counts, and rows normalised to recall per true class."""
    counts = matrix.numpy().astype(np.int64)
    normalised = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    n = len(class_names)
    size = max(5.0, 0.55 * n)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size), constrained_layout=True)
    for ax, data, fmt, label in ((axes[0], counts, "d", "count"), (axes[1], normalised, ".2f", "fraction of true class")):
        im = ax.imshow(data, cmap="Blues")
        ax.set_xticks(range(n), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0, ha="right")
        ax.set_yticks(range(n), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({label})")
        threshold = data.max() / 2 if data.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if data[i, j] > threshold else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def save_figure(fig: plt.Figure, path: Path, dpi: int = 110) -> None:
    """Save a figure through a temporary file and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)


def figure_to_array(path: Path) -> np.ndarray:
    """Read a saved PNG back as an (H, W, 3) uint8 array for TensorBoard."""
    image = plt.imread(path)
    if image.dtype != np.uint8:
        image = (image * 255).round().astype(np.uint8)
    return image[..., :3]


def tensorboard_writers(loggers: list[Any]) -> list[Any]:
    """The SummaryWriters of any TensorBoard loggers in the list."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def write_test_reports(
    results: dict[str, torch.Tensor],
    out_dir: str | Path,
    class_names: list[str],
    loggers: list[Any] = (),
    step: int = 0,
) -> dict[str, Path]:
    """Write the confusion matrix (PNG, CSV) into `out_dir` and log it to TensorBoard; return the paths."""
    out_dir = Path(out_dir)
    matrix = results["confusion_matrix"]
    paths = {"confusion_matrix_png": out_dir / "confusion_matrix.png", "confusion_matrix_csv": out_dir / "confusion_matrix.csv"}
    write_confusion_csv(paths["confusion_matrix_csv"], matrix, class_names)
    save_figure(confusion_figure(matrix, class_names), paths["confusion_matrix_png"])
    for writer in tensorboard_writers(list(loggers)):
        writer.add_image("test/confusion_matrix", figure_to_array(paths["confusion_matrix_png"]), step, dataformats="HWC")
        writer.flush()
    return paths
