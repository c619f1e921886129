"""The classification report, the report files and figures, the per-image collector and attention rollout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vit_mnist.models.rollout import attention_rollout
from vit_mnist.models.vit import VisionTransformer, ViTConfig
from vit_mnist.reports.classification import (
    REPORT_FILES,
    build_report,
    write_test_reports,
)
from vit_mnist.reports.samples import ReportSamples

CLASSES = [str(i) for i in range(10)]


def probs_for(preds: list[int], confidence: list[float], num_classes: int) -> torch.Tensor:
    """Probability rows whose top class is `preds[i]` with probability `confidence[i]`, the rest spread evenly."""
    probs = torch.empty(len(preds), num_classes)
    for i, (p, c) in enumerate(zip(preds, confidence)):
        probs[i] = (1 - c) / (num_classes - 1)
        probs[i, p] = c
    return probs


def test_report_matches_hand_computation() -> None:
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    preds = [0, 0, 1, 1, 1, 2, 2, 0]
    right = [t == p for t, p in zip(targets.tolist(), preds)]
    probs = probs_for(preds, [0.9 if r else 0.55 for r in right], 3)
    report = build_report(probs, targets, ["a", "b", "c"])
    # By hand: class a: TP 2, FP 1 (last image), FN 1; b: TP 2, FP 1, FN 0; c: TP 2, FP 0, FN 1.
    expected = {
        "a": (2 / 3, 2 / 3, 2 / 3, 3),
        "b": (2 / 3, 1.0, 0.8, 2),
        "c": (1.0, 2 / 3, 0.8, 3),
    }
    for name, (precision, recall, f1, support) in expected.items():
        row = report["classes"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision, recall, f1), abs=1e-6)
        assert row["support"] == support
    assert report["accuracy"] == pytest.approx(6 / 8)
    macro, weighted = report["macro avg"], report["weighted avg"]
    assert macro["precision"] == pytest.approx(7 / 9, abs=1e-6)
    assert macro["recall"] == pytest.approx(7 / 9, abs=1e-6)
    assert macro["f1"] == pytest.approx((2 / 3 + 0.8 + 0.8) / 3, abs=1e-6)
    assert weighted["precision"] == pytest.approx((3 * 2 / 3 + 2 * 2 / 3 + 3 * 1.0) / 8, abs=1e-6)
    assert weighted["recall"] == pytest.approx(6 / 8, abs=1e-6)
    assert weighted["f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.8 + 3 * 0.8) / 8, abs=1e-6)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    # Two bins are used: six right at confidence 0.9 (gap 0.1), two wrong at 0.55 (gap 0.55).
    assert report["ece"] == pytest.approx(6 / 8 * 0.1 + 2 / 8 * 0.55, abs=1e-6)


def test_report_accuracy_is_correct_over_total() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(503, 10, generator=generator).softmax(dim=1)
    targets = torch.randint(0, 10, (503,), generator=generator)
    targets[:200] = probs[:200].argmax(dim=1)  # well above chance, so the test is not about zeros
    report = build_report(probs, targets, CLASSES)
    correct = sum(int(row.argmax()) == int(t) for row, t in zip(probs, targets))
    assert report["accuracy"] == pytest.approx(correct / 503, abs=1e-7)
    assert sum(c["support"] for c in report["classes"].values()) == 503
    assert report["num_samples"] == 503


def test_build_report_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        build_report(torch.rand(4, 3), torch.zeros(4, dtype=torch.long), CLASSES)


def collected(num: int = 300, accuracy: float = 0.8, seed: int = 0) -> dict[str, torch.Tensor]:
    """What the test stage hands to the reports, from random images and predictions with `accuracy`."""
    generator = torch.Generator().manual_seed(seed)
    samples = ReportSamples()
    for start in range(0, num, 100):
        targets = torch.arange(start, start + 100) % 10
        preds = torch.where(torch.rand(100, generator=generator) < accuracy, targets, (targets + 3) % 10)
        confidence = 0.3 + 0.7 * torch.rand(100, generator=generator)
        images = torch.rand(100, 1, 28, 28, generator=generator)
        samples.update(images, probs_for(preds.tolist(), confidence.tolist(), 10), targets)
        pick = samples.missing_examples(targets)
        samples.add_examples(images[pick], targets[pick], preds[pick], torch.rand(len(pick), 4, 4, generator=generator))
    return samples.compute()


def test_collector_keeps_most_confident_mistakes_and_one_example_per_class() -> None:
    samples = ReportSamples(top_wrong=5, num_examples=3)
    batches = [([0, 1, 2, 0], [1, 1, 2, 2], [0.9, 0.8, 0.7, 0.6]), ([2, 1, 0, 2], [0, 1, 1, 0], [0.95, 0.5, 0.4, 0.36]),
               ([0, 0, 0, 0], [1, 1, 1, 1], [0.45, 0.85, 0.65, 0.99])]
    for i, (targets, preds, confidence) in enumerate(batches):
        targets = torch.tensor(targets)
        images = torch.full((4, 1, 2, 2), float(i))
        samples.update(images, probs_for(preds, confidence, 3), targets)
        pick = samples.missing_examples(targets)
        samples.add_examples(images[pick], targets[pick], torch.tensor(preds)[pick], torch.rand(len(pick), 2, 2))
    out = samples.compute()
    wrong_confidences = [0.9, 0.6, 0.95, 0.4, 0.36, 0.45, 0.85, 0.65, 0.99]  # every image whose pred != target
    assert out["wrong_confidence"].tolist() == pytest.approx(sorted(wrong_confidences, reverse=True)[:5])
    assert all(t != p for t, p in zip(out["wrong_targets"].tolist(), out["wrong_preds"].tolist()))
    assert out["example_targets"].tolist() == [0, 1, 2]  # first of each class, all in batch 0
    assert out["example_images"].unique().tolist() == [0.0]
    assert out["probs"].shape == (12, 3) and out["targets"].tolist() == [t for b in batches for t in b[0]]


def test_report_files_decode_and_match(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = collected()
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    paths = write_test_reports(results, tmp_path, CLASSES, [logger], step=7)
    assert sorted(p.name for p in paths.values()) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        assert (tmp_path / name).is_file(), name
        if name.endswith(".png"):
            image = plt.imread(tmp_path / name)
            assert image.ndim == 3 and min(image.shape[:2]) >= 200 and image.std() > 0.01, name
    report = json.loads((tmp_path / "classification_report.json").read_text())
    assert report == json.loads(json.dumps({"split": "test", **build_report(results["probs"], results["targets"], CLASSES)}))
    with open(tmp_path / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == report["confusion_matrix"]
    markdown = (tmp_path / "classification_report.md").read_text()
    assert "| macro avg |" in markdown and "| weighted avg |" in markdown and f"{report['accuracy']:.4f}" in markdown
    assert "weighted avg" in capsys.readouterr().out  # the rich table
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    for name in ("confusion_matrix", "misclassified", "calibration", "attention"):
        assert f"test/{name}" in events.Tags()["images"]
        assert events.Images(f"test/{name}")[0].step == 7
    assert "test/classification_report/text_summary" in events.Tags()["tensors"]


def test_reports_without_mistakes_still_write_every_figure(tmp_path: Path) -> None:
    results = collected(num=100, accuracy=1.0)
    assert "wrong_images" not in results
    write_test_reports(results, tmp_path, CLASSES, split="val")
    assert plt.imread(tmp_path / "misclassified.png").shape[1] >= 200
    assert json.loads((tmp_path / "classification_report.json").read_text())["split"] == "val"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_rollout_of_uniform_attention_is_uniform() -> None:
    tokens = 1 + 16
    attentions = [torch.full((2, 3, tokens, tokens), 1 / tokens) for _ in range(3)]
    maps = attention_rollout(attentions)
    assert maps.shape == (2, 4, 4)
    assert torch.allclose(maps, torch.ones_like(maps))


def test_rollout_follows_the_attended_patch() -> None:
    tokens = 1 + 9
    weights = torch.eye(tokens).repeat(1, 2, 1, 1)
    weights[:, :, 0] = 0.0
    weights[:, :, 0, 5] = 1.0  # the CLS token reads only patch 4 (token 5): the centre of a 3x3 grid
    maps = attention_rollout([weights, weights])
    assert maps[0].argmax().item() == 4 and maps[0].max() == 1.0
    assert (maps[0].flatten()[[0, 1, 2, 3, 5, 6, 7, 8]] == 0).all()
    mean_pooled = attention_rollout([weights], pool="mean")  # patch tokens attend to themselves
    assert torch.allclose(mean_pooled, torch.ones_like(mean_pooled))


def test_rollout_of_a_real_model() -> None:
    model = VisionTransformer(ViTConfig(hidden_dim=32, depth=2, heads=2, mlp_dim=64)).eval()
    with torch.no_grad():
        logits, attentions = model(torch.randn(3, 1, 28, 28), return_attention=True)
    maps = attention_rollout(attentions)
    assert maps.shape == (3, 4, 4) and (maps >= 0).all() and torch.allclose(maps.amax(dim=(1, 2)), torch.ones(3))
    with pytest.raises(ValueError):
        attention_rollout([None])  # the fast path's weights


def test_the_misclassified_figure_shows_each_image_in_order_under_its_title() -> None:
    from vit_mnist.reports.figures import misclassified_figure

    images = torch.zeros(11, 1, 28, 28)
    for i in range(11):
        images[i, 0, i, :] = 1.0  # image i: one white row, at row i
    preds, targets = torch.arange(11) % 10, (torch.arange(11) + 3) % 10
    fig = misclassified_figure(images, targets, preds, torch.linspace(0.5, 0.99, 11), CLASSES, cols=4)
    (ax,) = fig.axes
    mosaic = ax.images[0].get_array()
    filled = ~mosaic.mask
    assert filled.sum() == 11 * 28 * 28  # eleven images whole, the twelfth cell of the 3x4 grid empty
    cells = [(r, c) for r in range(3) for c in range(4)]
    cell_h, cell_w = mosaic.shape[0] // 3, mosaic.shape[1] // 4
    for i, (r, c) in enumerate(cells[:11]):
        block = mosaic[r * cell_h:(r + 1) * cell_h, c * cell_w:(c + 1) * cell_w]
        rows = (block.filled(0) > 0.5).any(axis=1).nonzero()[0]
        assert len(rows) == 1 and rows[0] == cell_h - 28 + i  # image i in its own cell, under its title
    titles = [t.get_text() for t in ax.texts]
    assert titles[0] == f"true {CLASSES[3]}\npred {CLASSES[0]} 0.50" and len(titles) == 11
    plt.close(fig)


def test_the_attention_figure_lays_each_map_block_over_the_pixels_of_its_patch() -> None:
    from vit_mnist.reports.figures import attention_figure

    images, maps = torch.zeros(3, 1, 28, 28), torch.zeros(3, 7, 7)
    images[1] = 1.0
    maps[2, 0, 0] = 1.0  # image 2's map: only its top-left patch is relevant
    fig = attention_figure(images, maps, torch.tensor([1, 2, 3]), torch.tensor([1, 5, 3]), CLASSES)
    (ax,) = fig.axes
    mosaic = ax.images[0].get_array()
    cell = mosaic.shape[1] // 3
    hot, cold = plt.get_cmap("inferno")(1.0)[:3], plt.get_cmap("inferno")(0.0)[:3]
    overlays = mosaic[-cell:]  # the bottom row of cells: each image under its map
    left = (cell - 28) // 2
    third = overlays[:28, 2 * cell + left:2 * cell + left + 28]
    assert np.allclose(third[:4, :4], 0.6 * np.array(hot)) and np.allclose(third[4:, 4:], 0.6 * np.array(cold))
    second = overlays[:28, cell + left:cell + left + 28]
    assert np.allclose(second, 0.4 + 0.6 * np.array(cold))  # a white image shows through 40% of the map
    colours = [t.get_color() for t in ax.texts]
    assert colours == ["black", "firebrick", "black"]  # the wrong answer in red
    plt.close(fig)
