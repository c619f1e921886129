"""Scoring models on the suite: each corruption made once and shared by the models, plus the digit sets and, for
models with an out-of-domain detector, the non-digit sets."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torchmetrics.classification import MulticlassAccuracy

from vit_mnist.data.corruptions import corrupt
from vit_mnist.data.digit_sets import DIGIT_SETS, load_digit_set
from vit_mnist.models.tta import tta_logits
from vit_mnist.robustness_suite.ood import OODDetector, OODMeter, has_features, logits_and_features
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
    # each digit set's accuracy per class (NaN for a class the set lacks): where a model's misses sit
    digit_sets_per_class: dict[str, list[float]] = field(default_factory=dict)
    predictions: dict[str, list[int]] = field(default_factory=dict)  # the example digits' predicted classes
    ood: Any = None  # vit_mnist.robustness_suite.ood.OODResult when the model had a detector

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
            "per_class": {f"{name}_acc": values for name, values in self.digit_sets_per_class.items()},
            "ood": self.ood.summary() if self.ood is not None else None,
        }


class Scorer:
    """A model ready to score uint8 images: the module, its normalisation, its test-time augmentation, its device,
    and (when set) its out-of-domain detector, where that comes from, and the other scores' detectors to compare."""

    def __init__(self, module: torch.nn.Module, mean: float, std: float, tta: bool, device: torch.device,
                 num_classes: int, batch_size: int):
        self.module, self.mean, self.std, self.tta = module.eval().to(device), mean, std, tta
        self.device, self.num_classes, self.batch_size = device, num_classes, batch_size
        self.detector: OODDetector | None = None
        self.detector_source = ""
        self.others: dict[str, OODDetector] = {}

    @property
    def wants_features(self) -> bool:
        """A detector scores features (the Mahalanobis score), and the network gives them."""
        net = getattr(self.module, "net", self.module)
        detectors = [self.detector, *self.others.values()] if self.detector is not None else []
        return any(d.needs_features for d in detectors) and has_features(net)

    @torch.inference_mode()
    def outputs(self, images: torch.Tensor, features: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (N, K) of uint8 (N, 1, H, W) on the CPU, batch by batch as `evaluate` runs them (same numbers),
        and the pre-logit features (N, D) when `features` (default: when the detector needs them), else None."""
        features = self.wants_features if features is None else features
        net = getattr(self.module, "net", self.module)  # the LightningModule's forward is its network's
        logits, feats = [], []
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size].to(self.device).float().div_(255.0)
            x = (x - self.mean) / self.std  # the data module's transform, op for op
            x = x.to(next(net.parameters()).dtype)  # weights trained in bf16-true/16-true are in that dtype
            if features:
                z, f = logits_and_features(net, x, self.tta)
                feats.append(f.float().cpu())
            else:
                z = tta_logits(self.module, x) if self.tta else self.module(x)
            logits.append(z.float().cpu())
        return torch.cat(logits), torch.cat(feats) if features else None

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted classes of uint8 (N, 1, H, W)."""
        return self.outputs(images, features=False)[0].argmax(dim=-1)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        acc, preds, _, _ = self.scored(images, labels)
        return acc, preds

    def scored(self, images: torch.Tensor, labels: torch.Tensor
               ) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Accuracy, predicted classes, logits and (when the detector needs them) features of labelled images."""
        logits, feats = self.outputs(images)
        preds = logits.argmax(dim=-1)
        metric = MulticlassAccuracy(self.num_classes, average="micro")
        return float(metric(preds, labels)), preds, logits, feats


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Recall of each class (its share of images read right), NaN for a class with no image."""
    recall = MulticlassAccuracy(num_classes, average=None)(preds, labels)
    support = torch.bincount(labels, minlength=num_classes)
    return [float(r) if n else math.nan for r, n in zip(recall.tolist(), support.tolist(), strict=True)]


def run_suite(scorers: Sequence[tuple[str, str, Scorer, list[str], dict]], images: torch.Tensor, labels: torch.Tensor,
              suite: Sequence[CorruptionSpec], seed: int = 0, examples: int = 6, digit_sets: Sequence[str] = (),
              digit_set_limit: int | None = None, non_digit_sets: Mapping[str, torch.Tensor] | None = None,
              ood_notes: Sequence[str] = ()) -> tuple[list[ModelResult], dict[str, torch.Tensor]]:
    """Every model on the clean images, on each corruption (each corrupted once, shared by the models) and on
    each of `digit_sets` (names in DIGIT_SETS: digits through predict's preprocessing); each model with a detector
    (`Scorer.detector`) also on the `non_digit_sets` (name -> uint8 images): its `ood` result.

    `digit_set_limit` keeps the first N digits of each digit set (a debug run's few). Returns the results and the
    first `examples` images of each set for the examples figure.
    """
    results = []
    shown = {"clean": images[:examples]}
    meters = [OODMeter(s.detector, s.detector_source, s.others) if s.detector is not None else None
              for _, _, s, _, _ in scorers]
    for (name, source, scorer, seen, extra), meter in zip(scorers, meters):
        clean, preds, logits, feats = scorer.scored(images, labels)
        if meter is not None:
            meter.add_digits("clean", logits, feats)
        predictions = {"_targets": labels[:examples].tolist(), "clean": preds[:examples].tolist()}
        results.append(ModelResult(name, source, clean, {}, seen, predictions=predictions, **extra))
    for set_name in digit_sets:
        set_images, set_labels = load_digit_set(set_name, images, labels, seed, digit_set_limit)
        for result, (_, _, scorer, _, _), meter in zip(results, scorers, meters):
            acc, preds, logits, feats = scorer.scored(set_images, set_labels)
            result.digit_sets[set_name] = acc
            result.digit_sets_per_class[set_name] = per_class_accuracy(preds, set_labels, scorer.num_classes)
            if meter is not None:
                meter.add_digits(set_name, logits, feats)
        log.info("%-14s %s", set_name, "  ".join(f"{r.digit_sets[set_name]:.4f}" for r in results))
    for spec in suite:
        started = time.perf_counter()
        corrupted = corrupt(images, spec.kind, spec.level, seed=seed, name=spec.name)
        shown[spec.name] = corrupted[:examples]
        for result, (_, _, scorer, _, _), meter in zip(results, scorers, meters):
            acc, preds, logits, feats = scorer.scored(corrupted, labels)
            result.accuracy[spec.name] = acc
            result.predictions[spec.name] = preds[:examples].tolist()
            if meter is not None:
                meter.add_digits(f"corrupt/{spec.name}", logits, feats)
        log.info("%-14s %s  (%.1f s)", spec.name, "  ".join(f"{r.accuracy[spec.name]:.4f}" for r in results),
                 time.perf_counter() - started)
    for set_name, set_images in (non_digit_sets or {}).items():
        for (_, _, scorer, _, _), meter in zip(scorers, meters):
            if meter is not None:
                meter.add_non_digits(set_name, *scorer.outputs(set_images))
        log.info("%-14s AUROC %s", set_name, "  ".join(f"{m.result.auroc[set_name]:.4f}" for m in meters if m))
    for result, meter in zip(results, meters):
        if meter is not None:
            meter.result.notes.extend(ood_notes)
            result.ood = meter.result
    return results, shown
