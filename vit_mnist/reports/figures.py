"""Matplotlib figures of test results: confusion matrix, misclassified images, reliability diagram, attention maps."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vit_mnist.models.registry import MAP_TITLES  # noqa: E402


def save_figure(fig: plt.Figure, path: Path, dpi: int = 110) -> None:
    """Save a figure through a temporary file and close it, so a crash never leaves half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", pad_inches=0.15)  # nothing cut off at the edges
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def figure_to_array(path: Path) -> np.ndarray:
    """Read a saved PNG back as an (H, W, 3) uint8 array for TensorBoard."""
    image = plt.imread(path)
    if image.dtype != np.uint8:
        image = (image * 255).round().astype(np.uint8)
    return image[..., :3]


def _short(name: str, width: int = 9) -> str:
    return name if len(name) <= width else name[: width - 1] + "."


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


def _empty_figure(text: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _mosaic_figure(width: float, height: float, title: str) -> tuple[plt.Figure, plt.Axes]:
    """A figure of `width` x `height` inches for one image mosaic: one axes without ticks under a 0.4-inch band
    for `title`. One axes for a whole grid of images: drawing one per image took most of the after-fit reports'
    time (docs/results.md#fast)."""
    fig = plt.figure(figsize=(width, height + 0.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + 0.4)))
    ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return fig, ax


def misclassified_figure(
    images: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, confidence: torch.Tensor,
    class_names: list[str], cols: int = 8,
) -> plt.Figure:
    """A grid of wrongly classified images (pixels in [0, 1]), each titled true -> predicted (confidence)."""
    if len(images) == 0:
        return _empty_figure("No misclassified images: every image was classified correctly.")
    n, (height, width) = len(images), images.shape[-2:]
    rows = math.ceil(n / cols)
    # each image in a cell of 1.45 x 1.65 inches, its title above it
    cell_w = round(width * 1.2)
    cell_h = round(cell_w * 1.65 / 1.45)  # square pixels
    mosaic = np.full((rows * cell_h, cols * cell_w), np.nan)
    fig, ax = _mosaic_figure(1.45 * cols, 1.65 * rows,
                             f"The {n} most confidently wrong predictions (true, predicted, confidence)")
    for i, (image, t, p, c) in enumerate(zip(images, targets.tolist(), preds.tolist(), confidence.tolist())):
        top, left = (i // cols) * cell_h + cell_h - height, (i % cols) * cell_w + (cell_w - width) // 2
        mosaic[top:top + height, left:left + width] = image[0].numpy()
        ax.text(left + width / 2, top - 1, f"true {_short(class_names[t])}\npred {_short(class_names[p])} {c:.2f}",
                ha="center", va="bottom", fontsize=7.5, color="firebrick")
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    return fig


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (NaN where a bin is empty)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are [lo, hi) as in torchmetrics' calibration error; a confidence of exactly 1 joins the last bin.
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=n_bins) / counts
    return edges, mean_conf, accuracy, counts


def _reliability_panel(top: plt.Axes, bottom: plt.Axes, probs: torch.Tensor, targets: torch.Tensor, title: str,
                       n_bins: int) -> None:
    """One reliability diagram: accuracy per confidence bin against the diagonal, the confidence histogram below."""
    confidence, preds = probs.max(dim=1)
    correct = (preds == targets).numpy()
    edges, mean_conf, accuracy, counts = reliability_bins(confidence.numpy().astype(np.float64), correct, n_bins)
    width = edges[1] - edges[0]
    filled = counts > 0
    top.bar(edges[:-1][filled], accuracy[filled], width=width, align="edge", color="tab:blue", edgecolor="black",
            label="accuracy")
    top.bar(edges[:-1][filled], (mean_conf - accuracy)[filled], bottom=accuracy[filled], width=width, align="edge",
            color="tab:red", alpha=0.35, edgecolor="tab:red", label="gap to confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(edges[:-1], counts, width=width, align="edge", color="gray", edgecolor="black")
    bottom.set_yscale("log")  # a good model puts most images in the top bin
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)


def calibration_figure(probs: torch.Tensor, targets: torch.Tensor, ece: float, n_bins: int = 15,
                       raw_probs: torch.Tensor | None = None, raw_ece: float | None = None,
                       temperature: float | None = None) -> plt.Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the confidence histogram. Given
    the probabilities before temperature scaling too (`raw_probs`, `raw_ece`), before and after side by side."""
    if raw_probs is None:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, height_ratios=[3, 1],
                                          constrained_layout=True)
        _reliability_panel(top, bottom, probs, targets, f"Reliability diagram (ECE {ece:.4f}, {n_bins} bins)", n_bins)
        return fig
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 6.5), sharex=True, height_ratios=[3, 1], constrained_layout=True)
    after = f"temperature {temperature:.3g}" if temperature is not None else "calibrated"
    _reliability_panel(axes[0, 0], axes[1, 0], raw_probs, targets,
                       f"Before calibration (ECE {raw_ece:.4f})" if raw_ece is not None else "Before calibration",
                       n_bins)
    _reliability_panel(axes[0, 1], axes[1, 1], probs, targets, f"After: {after} (ECE {ece:.4f})", n_bins)
    fig.suptitle(f"Reliability diagrams ({n_bins} bins)")
    return fig


def attention_figure(
    images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, class_names: list[str],
    title: str = MAP_TITLES["vit"],
) -> plt.Figure:
    """Each image above its relevance map laid over it: the ViT's attention rollout, or the CNN's class
    activation map (`title` says which)."""
    if len(images) == 0:
        return _empty_figure("No images to show.")
    n, (height, width) = len(images), images.shape[-2:]
    # an RGB mosaic, 1.5 inches a column: each image, its title above, and below it the image under its map, 60%
    # map, each map block stretched over the pixels of its patch
    cell_w = round(width * 1.2)
    title_h = round(cell_w * 0.35)
    mosaic = np.ones((title_h + 2 * cell_w, n * cell_w, 3))
    fig, ax = _mosaic_figure(1.5 * n, 1.5 * mosaic.shape[0] / cell_w, title)
    inferno = plt.get_cmap("inferno")
    for i in range(n):
        image = images[i, 0].clamp(0.0, 1.0).numpy()
        grey = np.repeat(image[..., None], 3, axis=-1)
        block = maps[i].clamp(0.0, 1.0).numpy()
        rows = ((np.arange(height) + 0.5) * block.shape[0] / height).astype(int)
        cols = ((np.arange(width) + 0.5) * block.shape[1] / width).astype(int)
        overlay = 0.4 * grey + 0.6 * inferno(block[np.ix_(rows, cols)])[..., :3]
        left = i * cell_w + (cell_w - width) // 2
        mosaic[title_h:title_h + height, left:left + width] = grey
        mosaic[title_h + cell_w:title_h + cell_w + height, left:left + width] = overlay
        colour = "black" if int(targets[i]) == int(preds[i]) else "firebrick"
        ax.text(left + width / 2, title_h - 1,
                f"true {_short(class_names[int(targets[i])])}\npred {_short(class_names[int(preds[i])])}",
                ha="center", va="bottom", fontsize=7.5, color=colour)
    ax.imshow(mosaic, aspect="auto", interpolation="nearest")
    return fig


def robustness_figure(results, corruption_names: list[str]) -> plt.Figure:
    """Accuracy per corruption as horizontal bars, one colour per model, the clean accuracy first."""
    labels = ["clean", *corruption_names, "mCA"]
    n_models = len(results)
    height = 0.8 / n_models
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(labels) * max(1.0, n_models * 0.6) + 1.2), constrained_layout=True)
    y = np.arange(len(labels))
    for i, r in enumerate(results):
        values = [r.clean, *[r.accuracy[n] for n in corruption_names], r.mca]
        ax.barh(y + (i - (n_models - 1) / 2) * height, [100 * v for v in values], height=height,
                label=f"{r.name} (mCA {100 * r.mca:.1f}%)")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("test accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Accuracy on corrupted MNIST test digits")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def robustness_examples_figure(shown: dict[str, torch.Tensor], result, class_names: list[str]) -> plt.Figure:
    """Each corruption (a row) on the same few test digits, titled with `result`'s prediction (red if wrong)."""
    rows = list(shown)
    cols = max((len(v) for v in shown.values()), default=0)
    fig, axes = plt.subplots(len(rows), max(cols, 1), figsize=(1.1 * max(cols, 1) + 1.4, 1.1 * len(rows)),
                             squeeze=False)
    truth = result.predictions.get("_targets")
    for r, name in enumerate(rows):
        images, preds = shown[name], result.predictions.get(name, [])
        for c in range(axes.shape[1]):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(images):
                continue
            ax.imshow(images[c, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            if c < len(preds):
                wrong = truth is not None and preds[c] != truth[c]
                ax.set_title(_short(class_names[preds[c]]), fontsize=7, color="red" if wrong else "black", pad=1)
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(top=1 - 0.45 / height, bottom=0.1 / height, hspace=0.35)
    fig.suptitle(f"Corrupted test digits; titles: {result.name}'s prediction (red: wrong)", fontsize=8,
                 y=1 - 0.12 / height)
    return fig
