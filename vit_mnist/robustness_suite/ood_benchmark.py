"""The out-of-domain benchmark's measures: the detector a benchmarked model uses (its checkpoint's, else one fitted
on the fly with every other score beside it), AUROC, images accepted at 99% digit acceptance, digits rejected."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torchmetrics.classification import BinaryAUROC

from vit_mnist.errors import UserError
from vit_mnist.models.outputs import has_features
from vit_mnist.ood.detector import (
    DEFAULT_SCORE,
    FitData,
    OODDetector,
    fit_detectors,
    split_fit_data,
)
from vit_mnist.ood.scores import SCORES
from vit_mnist.ood.thresholds import acceptance_threshold

log = logging.getLogger(__name__)


def detector_for(scorer: Any, stored: Any, score: str | None, fit_data: Callable[[], tuple[FitData, FitData | None]],
                 limit: int | None = None) -> tuple[OODDetector | None, str, dict[str, OODDetector]]:
    """The detector for a `Scorer` (vit_mnist.robustness_suite.scoring): the checkpoint's `stored` one (an
    OODDetector or its state) unless `score` names another, else one fitted on the fly on `fit_data()` at the
    module's calibration temperature. Also a sentence saying which, for the reports, and the detectors of the
    other scores fitted on the same images, which the benchmark compares (none for a stored detector). When
    `fit_data()` cannot be read (a `UserError`), no detector (None) and the sentence says why."""
    if stored is not None:
        detector = stored if isinstance(stored, OODDetector) else OODDetector.from_state(stored)
        if score is None or score == detector.name:
            return detector, f"stored in the checkpoint: {detector.describe()}", {}
        why = f"ood_score={score} asks for another score than the stored {detector.name}"
    else:
        why = "the checkpoint holds no detector"
    score = score or DEFAULT_SCORE
    features = has_features(getattr(scorer.module, "net", scorer.module))
    try:
        train, val = fit_data()
    except UserError as e:
        log.warning("No out-of-domain detector: %s", e)
        return None, f"no out-of-domain detector: the checkpoint has none and its data cannot be read ({e})", {}
    stats, held, where = split_fit_data(train, val, limit)
    # every score the network allows, compared on the same images; a score it cannot give alone: fit_detectors says
    usable = [name for name in SCORES if features or not SCORES[name].needs_features]
    detectors = fit_detectors(lambda images: scorer.outputs(images, features=features), stats, held,
                              scorer.num_classes, usable if score in usable else [score],
                              float(getattr(scorer.module, "temperature", 1.0)))
    detector = detectors.pop(score)
    source = f"fitted on the fly ({why}): {detector.describe()}, {where}"
    log.info("Out-of-domain detector %s", source)
    return detector, source, detectors


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the ROC curve of telling `out_scores` (positives) from `in_scores` by their outlier score
    (torchmetrics' BinaryAUROC; ties count half)."""
    scores = torch.cat([in_scores.double().flatten(), out_scores.double().flatten()])
    # BinaryAUROC squashes values outside [0, 1] with a sigmoid, which ties large scores: give it their ranks
    _, ranks = torch.unique(scores, sorted=True, return_inverse=True)
    preds = ranks.double() / max(1, int(ranks.max()))
    target = torch.cat([torch.zeros(len(in_scores.flatten()), device=scores.device),
                        torch.ones(len(out_scores.flatten()), device=scores.device)]).long()
    return float(BinaryAUROC()(preds, target))


@dataclass
class OODResult:
    """One model's out-of-domain benchmark for one detector: per non-digit set the AUROC against the clean test
    images and the share accepted at 99% acceptance of them (and at the detector's own threshold); per in-domain
    set (clean, `corrupt/<name>`, other writers...) the shares given each verdict. `others`: the same for the
    other scores' detectors, fitted on the same images (the comparison that chose the default)."""

    score: str
    source: str  # where the detector comes from
    thresholds: dict[str, float]
    auroc: dict[str, float] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)  # at 99% acceptance of the clean test images
    accepted_at_threshold: dict[str, float] = field(default_factory=dict)  # at the detector's validation threshold
    out_of_domain: dict[str, float] = field(default_factory=dict)  # in-domain sets marked out_of_domain
    unsure: dict[str, float] = field(default_factory=dict)  # in-domain sets marked unsure
    sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    others: dict[str, OODResult] = field(default_factory=dict)

    @property
    def mean_auroc(self) -> float:
        return _mean(list(self.auroc.values()))

    @property
    def corrupted_out_of_domain(self) -> float:
        """The mean over the corruptions (entries `corrupt/<name>`) of the share marked out_of_domain."""
        return _mean([v for k, v in self.out_of_domain.items() if k.startswith("corrupt/")])

    def summary(self) -> dict[str, Any]:
        out = {"score": self.score, "detector": self.source, "thresholds": self.thresholds,
               "mean_auroc": self.mean_auroc, "auroc": self.auroc, "accepted_at_99": self.accepted,
               "accepted_at_threshold": self.accepted_at_threshold, "out_of_domain": self.out_of_domain,
               "corrupted_out_of_domain": self.corrupted_out_of_domain, "unsure": self.unsure, "sizes": self.sizes,
               "notes": self.notes}
        if self.others:
            out["other_scores"] = {k: {key: value for key, value in r.summary().items()
                                       if key not in ("detector", "sizes", "notes")} for k, r in self.others.items()}
        return out

    def metrics(self, prefix: str = "test/") -> dict[str, float]:
        """metrics.json's entries: {prefix}ood_auroc (mean over sets) and per set, shares accepted and rejected."""
        out = {f"{prefix}ood_auroc": self.mean_auroc}
        out.update({f"{prefix}ood_auroc/{k}": v for k, v in self.auroc.items()})
        out.update({f"{prefix}ood_accepted/{k}": v for k, v in self.accepted.items()})
        rejected = {k: v for k, v in self.out_of_domain.items() if not k.startswith("corrupt/")}
        if any(k.startswith("corrupt/") for k in self.out_of_domain):
            rejected["corrupted"] = self.corrupted_out_of_domain
        out.update({f"{prefix}ood_rejected/{k}": v for k, v in rejected.items()})
        if "clean" in self.unsure:
            out[f"{prefix}ood_unsure/clean"] = self.unsure["clean"]
        return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class OODMeter:
    """Collects one model's outputs set by set during the benchmark and makes its OODResult (for its detector and
    for each of `others`)."""

    def __init__(self, detector: OODDetector, source: str, others: Mapping[str, OODDetector] | None = None):
        self.detectors = {detector.name: detector, **{k: d for k, d in (others or {}).items() if k != detector.name}}
        self.results = {k: OODResult(k, source if k == detector.name else "fitted with it on the same images",
                                     {"out_of_domain": d.ood_threshold, "unsure": d.unsure_threshold,
                                      **({"flat": d.flat_threshold} if d.flat_threshold else {})})
                        for k, d in self.detectors.items()}
        self.main = detector.name
        self.clean: dict[str, torch.Tensor] = {}

    @property
    def result(self) -> OODResult:
        result = self.results[self.main]
        result.others = {k: r for k, r in self.results.items() if k != self.main}
        return result

    def add_digits(self, name: str, logits: torch.Tensor, features: torch.Tensor | None) -> None:
        """A set of in-domain images (`clean` first: the reference of every AUROC): shares of each verdict."""
        probs = (logits.double() / self.detectors[self.main].temperature).softmax(-1)
        for key, detector in self.detectors.items():
            scores = detector.scores(logits, features)
            if name == "clean":
                self.clean[key] = scores
            codes = detector.verdict_codes(probs, scores)
            result = self.results[key]
            result.out_of_domain[name] = float((codes == 2).double().mean())
            result.unsure[name] = float((codes == 1).double().mean())
            result.sizes[name] = len(logits)

    def add_non_digits(self, name: str, logits: torch.Tensor, features: torch.Tensor | None) -> None:
        """A set of outliers: AUROC against the clean images, share accepted at 99% acceptance of them."""
        if not self.clean:
            raise ValueError("add the clean images first")
        for key, detector in self.detectors.items():
            scores, clean, result = detector.scores(logits, features), self.clean[key], self.results[key]
            result.auroc[name] = auroc(clean, scores)
            result.accepted[name] = float((scores <= acceptance_threshold(clean)).double().mean())
            result.accepted_at_threshold[name] = float((scores <= detector.ood_threshold).double().mean())
            result.sizes[name] = len(logits)
