"""Scoring models on the suite: each corruption made once and shared by the models, plus the digit sets."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torchmetrics.classification import MulticlassAccuracy

from vit_mnist.data.corruptions import corrupt
from vit_mnist.data.digit_sets import DIGIT_SETS, load_digit_set
from vit_mnist.models.tta import tta_logits
from vit_mnist.robustness_suite.suite import CorruptionSpec

log = logging.getLogger(__name__)


@dataclass
class ModelResult:
    """One checkpoint's accuracy on the clean and every corrupted test set."""

    name: str
    source: str
    clean: float
    accuracy: dict[str, float]
    seen: list[str]
    num_parameters: int = 0
    arch: str = "vit"
    # accuracy on each of DIGIT_SETS that was measured (MNIST models only)
    digit_sets: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, list[int]] = field(default_factory=dict)  # the example digits' predicted classes

    @property
    def other_writers(self) -> float | None:
        """Accuracy on digits by writers outside MNIST (None: not measured)."""
        return self.digit_sets.get("other_writers")

    @property
    def mca(self) -> float:
        return sum(self.accuracy.values()) / len(self.accuracy) if self.accuracy else math.nan

    @property
    def unseen_mca(self) -> float:
        unseen = [v for k, v in self.accuracy.items() if k not in self.seen]
        return sum(unseen) / len(unseen) if unseen else math.nan

    def worst(self, n: int = 3) -> list[tuple[str, float]]:
        return sorted(self.accuracy.items(), key=lambda kv: kv[1])[:n]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "ckpt_path": self.source, "arch": self.arch, "num_parameters": self.num_parameters,
            "clean_acc": self.clean, "mca": self.mca, "unseen_mca": self.unseen_mca,
            **{f"{name}_acc": self.digit_sets.get(name) for name in DIGIT_SETS},
            "mean_drop": self.clean - self.mca if self.accuracy else math.nan,
            "seen": self.seen, "worst": [{"corruption": k, "acc": v} for k, v in self.worst()],
            "acc": self.accuracy,
        }


class Scorer:
    """A model ready to score uint8 images: the module, its normalisation, its test-time augmentation, its device."""

    def __init__(self, module: torch.nn.Module, mean: float, std: float, tta: bool, device: torch.device,
                 num_classes: int, batch_size: int):
        self.module, self.mean, self.std, self.tta = module.eval().to(device), mean, std, tta
        self.device, self.num_classes, self.batch_size = device, num_classes, batch_size

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted classes of uint8 (N, 1, H, W), batch by batch as `evaluate` runs them (same numbers)."""
        preds = []
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size].to(self.device).float().div_(255.0)
            x = (x - self.mean) / self.std  # the data module's transform, op for op
            logits = tta_logits(self.module, x) if self.tta else self.module(x)
            preds.append(logits.argmax(dim=-1).cpu())
        return torch.cat(preds)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        preds = self.predict(images)
        metric = MulticlassAccuracy(self.num_classes, average="micro")
        return float(metric(preds, labels)), preds


def run_suite(scorers: Sequence[tuple[str, str, Scorer, list[str], dict]], images: torch.Tensor, labels: torch.Tensor,
              suite: Sequence[CorruptionSpec], seed: int = 0, examples: int = 6, digit_sets: Sequence[str] = (),
              digit_set_limit: int | None = None) -> tuple[list[ModelResult], dict[str, torch.Tensor]]:
    """Every model on the clean images, on each corruption (each corrupted once, shared by the models) and on
    each of `digit_sets` (names in DIGIT_SETS: digits through predict's preprocessing).

    `digit_set_limit` keeps the first N digits of each digit set (a debug run's few). Returns the results and the
    first `examples` images of each set for the examples figure.
    """
    results = []
    shown = {"clean": images[:examples]}
    for name, source, scorer, seen, extra in scorers:
        clean, preds = scorer.accuracy(images, labels)
        predictions = {"_targets": labels[:examples].tolist(), "clean": preds[:examples].tolist()}
        results.append(ModelResult(name, source, clean, {}, seen, predictions=predictions, **extra))
    for set_name in digit_sets:
        set_images, set_labels = load_digit_set(set_name, images, labels, seed, digit_set_limit)
        for result, (_, _, scorer, _, _) in zip(results, scorers):
            result.digit_sets[set_name] = scorer.accuracy(set_images, set_labels)[0]
        log.info("%-14s %s", set_name, "  ".join(f"{r.digit_sets[set_name]:.4f}" for r in results))
    for spec in suite:
        started = time.perf_counter()
        corrupted = corrupt(images, spec.kind, spec.level, seed=seed, name=spec.name)
        shown[spec.name] = corrupted[:examples]
        for result, (_, _, scorer, _, _) in zip(results, scorers):
            acc, preds = scorer.accuracy(corrupted, labels)
            result.accuracy[spec.name] = acc
            result.predictions[spec.name] = preds[:examples].tolist()
        log.info("%-14s %s  (%.1f s)", spec.name, "  ".join(f"{r.accuracy[spec.name]:.4f}" for r in results),
                 time.perf_counter() - started)
    return results, shown
