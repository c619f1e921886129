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
from torchmetrics.functional.classification import multiclass_calibration_error

from vit_mnist.data.corruptions import corrupt
from vit_mnist.data.digit_sets import DIGIT_SETS, load_digit_set
from vit_mnist.data.pen_photos import PEN_PHOTOS_IMAGES
from vit_mnist.models.outputs import has_features, run_network
from vit_mnist.ood.detector import OODDetector
from vit_mnist.reports.samples import CALIBRATION_BINS
from vit_mnist.robustness_suite.ood_benchmark import OODMeter
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
    # expected calibration error of the calibrated probabilities on each set: clean, each corruption, each digit set
    ece: dict[str, float] = field(default_factory=dict)
    ood: Any = None  # vit_mnist.robustness_suite.ood_benchmark.OODResult when the model had a detector

    @property
    def other_writers(self) -> float | None:
        """Accuracy on digits by writers outside MNIST (None: not measured)."""
        return self.digit_sets.get("other_writers")

    @property
    def corrupted_ece(self) -> float:
        """The mean over the corruptions of the ECE (NaN when not measured)."""
        values = [v for k, v in self.ece.items() if k in self.accuracy]
        return sum(values) / len(values) if values else math.nan

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
            "ece": {"corrupted_mean": self.corrupted_ece, **self.ece},
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

    def outputs(self, images: torch.Tensor, features: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (N, K) of uint8 (N, 1, H, W) on the CPU, batch by batch as `evaluate` runs them (same numbers),
        and the pre-logit features (N, D) when `features` (default: when the detector needs them), else None."""
        features = self.wants_features if features is None else features
        net = getattr(self.module, "net", self.module)  # the LightningModule's forward is its network's
        return run_network(net, images, self.mean, self.std, tta=self.tta, features=features, device=self.device,
                           batch_size=self.batch_size)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted classes of uint8 (N, 1, H, W)."""
        return self.outputs(images, features=False)[0].argmax(dim=-1)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        acc, preds, _, _ = self.scored(images, labels)
        return acc, preds

    def calibration_error(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """ECE of softmax(logits / the module's temperature) on `labels`: the test metrics' measure, under shift."""
        probs = (logits.double() / float(getattr(self.module, "temperature", 1.0))).softmax(dim=-1)
        return float(multiclass_calibration_error(probs, labels.to(probs.device), self.num_classes,
                                                  n_bins=CALIBRATION_BINS, norm="l1"))

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


@dataclass
class ModelEntry:
    """One model of a benchmark: its name in the reports, where it comes from, its scorer (module, normalisation,
    shifts, device, detector) and the corruptions its training augmentation resembles ("seen")."""

    name: str
    source: str
    scorer: Scorer
    seen: list[str]
    num_parameters: int = 0
    arch: str = "vit"


def run_suite(entries: Sequence[ModelEntry], images: torch.Tensor, labels: torch.Tensor,
              suite: Sequence[CorruptionSpec], seed: int = 0, examples: int = 6, digit_sets: Sequence[str] = (),
              digit_set_limit: int | None = None, non_digit_sets: Mapping[str, torch.Tensor] | None = None,
              ood_notes: Sequence[str] = (), pen_photos: int = PEN_PHOTOS_IMAGES
              ) -> tuple[list[ModelResult], dict[str, torch.Tensor]]:
    """Every model on the clean images, on each corruption (each corrupted once, shared by the models) and on
    each of `digit_sets` (names in DIGIT_SETS: digits through predict's preprocessing); each model with a detector
    (`Scorer.detector`) also on the `non_digit_sets` (name -> uint8 images): its `ood` result.

    `digit_set_limit` keeps the first N digits of each digit set (a debug run's few); the first `pen_photos` test
    digits are photographed for the pen photos. Returns the results and the first `examples` images of each set
    for the examples figure.
    """
    results = []
    shown = {"clean": images[:examples]}
    scorers = [entry.scorer for entry in entries]
    meters = [OODMeter(s.detector, s.detector_source, s.others) if s.detector is not None else None for s in scorers]
    for entry, meter in zip(entries, meters):
        clean, preds, logits, feats = entry.scorer.scored(images, labels)
        if meter is not None:
            meter.add_digits("clean", logits, feats)
        ece = {"clean": entry.scorer.calibration_error(logits, labels)}
        predictions = {"_targets": labels[:examples].tolist(), "clean": preds[:examples].tolist()}
        results.append(ModelResult(entry.name, entry.source, clean, {}, entry.seen, entry.num_parameters, entry.arch,
                                   predictions=predictions, ece=ece))
    for set_name in digit_sets:
        set_images, set_labels = load_digit_set(set_name, images, labels, seed, digit_set_limit, pen_photos)
        for result, scorer, meter in zip(results, scorers, meters):
            acc, preds, logits, feats = scorer.scored(set_images, set_labels)
            result.digit_sets[set_name] = acc
            result.digit_sets_per_class[set_name] = per_class_accuracy(preds, set_labels, scorer.num_classes)
            result.ece[set_name] = scorer.calibration_error(logits, set_labels)
            if meter is not None:
                meter.add_digits(set_name, logits, feats)
        log.info("%-14s %s", set_name, "  ".join(f"{r.digit_sets[set_name]:.4f}" for r in results))
    for spec in suite:
        started = time.perf_counter()
        corrupted = corrupt(images, spec.kind, spec.level, seed=seed, name=spec.name)
        shown[spec.name] = corrupted[:examples]
        for result, scorer, meter in zip(results, scorers, meters):
            acc, preds, logits, feats = scorer.scored(corrupted, labels)
            result.accuracy[spec.name] = acc
            result.predictions[spec.name] = preds[:examples].tolist()
            result.ece[spec.name] = scorer.calibration_error(logits, labels)
            if meter is not None:
                meter.add_digits(f"corrupt/{spec.name}", logits, feats)
        log.info("%-14s %s  (%.1f s)", spec.name, "  ".join(f"{r.accuracy[spec.name]:.4f}" for r in results),
                 time.perf_counter() - started)
    for set_name, set_images in (non_digit_sets or {}).items():
        for scorer, meter in zip(scorers, meters):
            if meter is not None:
                meter.add_non_digits(set_name, *scorer.outputs(set_images))
        log.info("%-14s AUROC %s", set_name, "  ".join(f"{m.result.auroc[set_name]:.4f}" for m in meters if m))
    for result, meter in zip(results, meters):
        if meter is not None:
            meter.result.notes.extend(ood_notes)
            result.ood = meter.result
    return results, shown
