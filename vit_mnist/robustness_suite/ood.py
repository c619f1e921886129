"""Out-of-domain scores of a trained classifier, the detector that turns one into verdicts, and the benchmark's
measures (AUROC, images accepted at 99% digit acceptance, digits rejected)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torchmetrics.classification import BinaryAUROC

from vit_mnist.errors import UserError
from vit_mnist.models.tta import SHIFTS, shift, tta_logits

log = logging.getLogger(__name__)

# Every score is an outlier score: the higher, the less the image looks like the training data.
#   msp: -log of the largest calibrated softmax probability (Hendrycks & Gimpel, 2017), the maximum softmax
#        probability's order, without its saturation at 1.0 in floating point
#   energy: -T logsumexp(logits / T), T = 1 (Liu et al., NeurIPS 2020)
#   mahalanobis: the smallest squared Mahalanobis distance of the pre-logit features to a class mean, with class
#        means and one shared covariance fitted on training images (Lee et al., NeurIPS 2018; no input
#        perturbation, last layer only)
SCORES = ("msp", "energy", "mahalanobis")
SCORE_NAMES = {"msp": "maximum softmax probability", "energy": "energy score",
               "mahalanobis": "Mahalanobis distance on the features"}
DEFAULT_SCORE = "mahalanobis"  # measured: docs/out_of_domain.md
VERDICTS = ("confident", "unsure", "out_of_domain")
DIGIT_ACCEPTANCE = 0.99  # validation digits that are not out_of_domain
CONFIDENT_PRECISION = 0.998  # validation digits called confident that are right
MIN_CONFIDENCE = 0.5  # below this calibrated top-1 probability an answer is never confident
SHRINKAGE = 1e-3  # ridge on the shared covariance, as a fraction of its mean variance: keeps it invertible
FIT_IMAGES = 5000  # training images for the Mahalanobis statistics
THRESHOLD_IMAGES = 5000  # validation images for the thresholds
ENERGY_TEMPERATURE = 1.0
CHECKPOINT_KEY = "ood_detector"  # a checkpoint's stored detector (its state_dict())

Outputs = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


# ---- the network's outputs -------------------------------------------------------------------------------------

def has_features(net: torch.nn.Module) -> bool:
    """Whether `net` gives its pre-logit features (both networks of vit_mnist.models do)."""
    return callable(getattr(net, "logits_and_features", None))


def logits_and_features(net: torch.nn.Module, x: torch.Tensor, tta: bool = False, features: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of normalised images `x`, exactly as `net(x)` (with `tta`: as `tta_logits(net, x)`), and, with
    `features`, the pre-logit features, averaged over the same shifts; None without `features`."""
    if not features:
        return (tta_logits(net, x) if tta else net(x)), None
    if not tta:
        return net.logits_and_features(x)
    views = torch.cat([shift(x, dy, dx) for dy, dx in SHIFTS])  # one batch, as tta_logits runs them
    logits, feats = net.logits_and_features(views)
    return (logits.view(len(SHIFTS), len(x), -1).mean(dim=0), feats.view(len(SHIFTS), len(x), -1).mean(dim=0))


# ---- the scores ------------------------------------------------------------------------------------------------

def msp_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """-log max softmax(logits / T) (N,): 0 for a certain answer, log K for a uniform one."""
    z = logits.double() / temperature
    top = z.argmax(dim=-1, keepdim=True)
    # log(1 + sum of the others' exp(z_j - z_max)): no 1 + tiny rounding to 1 for very sure answers
    return torch.log1p(torch.exp(z - z.gather(-1, top)).scatter(-1, top, 0.0).sum(dim=-1))


def energy_score(logits: torch.Tensor, temperature: float = ENERGY_TEMPERATURE) -> torch.Tensor:
    """-T logsumexp(logits / T) (N,): low for the training data's images, higher outside it."""
    z = logits.double()
    return -temperature * torch.logsumexp(z / temperature, dim=-1)


def fit_class_gaussians(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        shrinkage: float = SHRINKAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (K, D) and the precision (D, D) of the covariance they share (Lee et al., 2018), a ridge of
    `shrinkage` times the mean variance added. Every class needs an image."""
    f, y = features.double(), labels.long()
    counts = torch.bincount(y, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise UserError(f"The images for the Mahalanobis statistics have no example of class(es) {missing}: fit them "
                        "on more training images (every class needs some).")
    means = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, y, f) / counts[:, None]
    centred = f - means[y]
    covariance = centred.T @ centred / len(f)
    ridge = shrinkage * float(covariance.diagonal().mean()) + 1e-12
    precision = torch.linalg.inv(covariance + ridge * torch.eye(f.shape[1], dtype=torch.float64, device=f.device))
    return means, (precision + precision.T) / 2


def mahalanobis_score(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """min over classes of (f - mean_c)^T precision (f - mean_c) (N,), in float64."""
    f, mu, p = features.double(), means.double(), precision.double()
    fp = f @ p
    distances = (fp * f).sum(dim=1, keepdim=True) - 2 * fp @ mu.T + ((mu @ p) * mu).sum(dim=1)[None]
    return distances.min(dim=1).values.clamp_min(0.0)


# ---- thresholds --------------------------------------------------------------------------------------------------

def acceptance_threshold(scores: torch.Tensor, acceptance: float = DIGIT_ACCEPTANCE) -> float:
    """The smallest score t with at least `acceptance` of `scores` <= t: images scoring above t are rejected."""
    if not len(scores):
        raise ValueError("no scores to fix a threshold on")
    s = scores.double().flatten().sort().values
    return float(s[min(len(s), math.ceil(acceptance * len(s) - 1e-9)) - 1])


def confidence_threshold(top1: torch.Tensor, correct: torch.Tensor, precision: float = CONFIDENT_PRECISION,
                         floor: float = MIN_CONFIDENCE) -> float:
    """The lowest top-1 probability t (at least `floor`) such that the answers with probability >= t are right at
    least `precision` of the time; above every probability (nothing confident) when no t reaches it."""
    p, ok = top1.double().flatten(), correct.bool().flatten()
    order = torch.argsort(p, descending=True)
    p, ok = p[order], ok[order]
    right = torch.cumsum(ok.double(), 0) / torch.arange(1, len(p) + 1, dtype=torch.float64, device=p.device)
    # a cut between tied probabilities is no cut: look only at the last image of each run of equal ones
    last = torch.ones(len(p), dtype=torch.bool, device=p.device)
    last[:-1] = p[1:] != p[:-1]
    good = torch.nonzero(last & (right >= precision)).flatten()
    if not len(good):
        return math.inf
    return max(floor, float(p[good[-1]]))


# ---- the detector ------------------------------------------------------------------------------------------------

@dataclass
class OODDetector:
    """A score and what it needs (Mahalanobis: class means and precision), with the thresholds fixed on validation
    data: an image scoring above `ood_threshold` is `out_of_domain`; else a calibrated top-1 probability below
    `unsure_threshold` is `unsure`; else `confident`. The probabilities it judges are softmax(logits /
    `temperature`), the calibration it was fitted at. Plain tensors, numbers and strings: it goes into a
    checkpoint (CHECKPOINT_KEY) as `state_dict()` and comes back with `from_state`."""

    score: str
    ood_threshold: float
    unsure_threshold: float
    temperature: float = 1.0  # the calibration the msp score and the probabilities use
    class_means: torch.Tensor | None = None
    precision: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what it was fitted on (counts, targets)

    @property
    def needs_features(self) -> bool:
        return self.score == "mahalanobis"

    def scores(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The outlier score (N,) of images with these logits (and features, for Mahalanobis)."""
        return outlier_scores(self.score, logits, features, self.temperature, self.class_means, self.precision)

    def verdicts(self, probs: torch.Tensor, scores: torch.Tensor) -> list[str]:
        """`confident`, `unsure` or `out_of_domain` for each image, from its calibrated probabilities (N, K) and
        its outlier score (N,)."""
        return [VERDICTS[i] for i in self.verdict_codes(probs, scores).tolist()]

    def verdict_codes(self, probs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The verdicts as indices into VERDICTS (N,)."""
        codes = torch.where(probs.max(dim=-1).values.double() < self.unsure_threshold, 1, 0)
        return torch.where(scores.double().flatten() > self.ood_threshold, 2, codes)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"score": self.score, "ood_threshold": float(self.ood_threshold),
                                 "unsure_threshold": float(self.unsure_threshold),
                                 "temperature": float(self.temperature), "info": dict(self.info)}
        if self.class_means is not None:
            state["class_means"] = self.class_means.detach().float().cpu()
            state["precision"] = self.precision.detach().float().cpu()
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> OODDetector:
        """The detector `state_dict()` saved; a `UserError` when the state is damaged."""
        try:
            score = str(state["score"])
            numbers = [float(state[k]) for k in ("ood_threshold", "unsure_threshold", "temperature")]
            means, precision = state.get("class_means"), state.get("precision")
            ok = score in SCORES and not any(math.isnan(v) for v in numbers) and numbers[2] > 0
            if score == "mahalanobis":
                ok = ok and isinstance(means, torch.Tensor) and isinstance(precision, torch.Tensor) and \
                    means.ndim == 2 and precision.shape == (means.shape[1], means.shape[1])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError("The checkpoint's out-of-domain detector is damaged (missing or invalid score, thresholds "
                            "or statistics): the file was edited or comes from another version of vit-mnist. "
                            "Retrain, or give another checkpoint.")
        return cls(score, *numbers, class_means=means, precision=precision, info=dict(state.get("info") or {}))

    def describe(self) -> str:
        extra = f" (temperature {self.temperature:.3g})" if self.score == "msp" else ""
        return f"{SCORE_NAMES[self.score]}{extra}"


def outlier_scores(score: str, logits: torch.Tensor, features: torch.Tensor | None = None, temperature: float = 1.0,
                   means: torch.Tensor | None = None, precision: torch.Tensor | None = None) -> torch.Tensor:
    """The outlier score `score` (one of SCORES) of images with these logits and features."""
    if score == "msp":
        return msp_score(logits, temperature)
    if score == "energy":
        return energy_score(logits)
    if score == "mahalanobis":
        if features is None or means is None or precision is None:
            raise ValueError("the Mahalanobis score needs the features and the fitted class means and precision")
        return mahalanobis_score(features, means, precision)
    raise UserError(f"ood_score={score!r} is not an out-of-domain score: choose one of {list(SCORES)}.")


def check_score(score: Any) -> str | None:
    """`score` if it names one of SCORES (None: the default); a `UserError` otherwise."""
    if score is None or score in SCORES:
        return score
    raise UserError(f"ood_score={score!r} is not an out-of-domain score: choose one of {list(SCORES)} "
                    f"(msp: maximum softmax probability, energy: the energy score, mahalanobis: the distance of the "
                    f"network's features to its classes), or null for the checkpoint's own ({DEFAULT_SCORE} when it "
                    "has none).")


@dataclass
class FitData:
    """Digits a detector is fitted on: images (uint8 (N, 1, H, W)) and their labels."""

    images: torch.Tensor
    labels: torch.Tensor


def fit_detectors(outputs: Outputs, stats: FitData, thresholds: FitData, num_classes: int,
                  scores: Sequence[str] = SCORES, temperature: float = 1.0) -> dict[str, OODDetector]:
    """A detector for each of `scores`, from one pass over each set of digits: the Mahalanobis statistics on
    `stats`, the thresholds on `thresholds` (disjoint digits: a score fitted and thresholded on the same images
    would accept them too easily). `outputs` maps uint8 images to (logits, features). The Mahalanobis score is
    left out when the network gives no features, unless it is the only one asked for (a `UserError`)."""
    means = precision = None
    if "mahalanobis" in scores:
        _, features = outputs(stats.images)
        if features is not None:
            means, precision = fit_class_gaussians(features, stats.labels, num_classes)
        elif list(scores) == ["mahalanobis"]:
            raise UserError("This network gives no features, so the Mahalanobis score cannot be fitted: choose "
                            "ood_score=energy or ood_score=msp.")
    logits, features = outputs(thresholds.images)
    probs = (logits.double() / temperature).softmax(dim=-1)
    top1, preds = probs.max(dim=-1)
    unsure = confidence_threshold(top1, preds == thresholds.labels.to(preds.device))
    info = {"statistics_images": len(stats.labels) if means is not None else 0,
            "threshold_images": len(thresholds.labels), "digit_acceptance": DIGIT_ACCEPTANCE,
            "confident_precision": CONFIDENT_PRECISION}
    detectors = {}
    for score in scores:
        if score == "mahalanobis" and means is None:
            continue
        mahalanobis = score == "mahalanobis"
        detector = OODDetector(score, math.nan, unsure, float(temperature), means if mahalanobis else None,
                               precision if mahalanobis else None,
                               {**info, "statistics_images": info["statistics_images"] if mahalanobis else 0})
        detector.ood_threshold = acceptance_threshold(detector.scores(logits, features))
        detectors[score] = detector
    return detectors


def fit_detector(outputs: Outputs, stats: FitData, thresholds: FitData, num_classes: int,
                 score: str = DEFAULT_SCORE, temperature: float = 1.0) -> OODDetector:
    """The detector for `score` (see `fit_detectors`)."""
    return fit_detectors(outputs, stats, thresholds, num_classes, (score,), temperature)[score]


def split_fit_data(train: FitData, val: FitData | None, limit: int | None = None) -> tuple[FitData, FitData, str]:
    """The training images for the statistics and the validation images for the thresholds (each capped at
    FIT_IMAGES / THRESHOLD_IMAGES, `limit` x 10 when given: a debug run's few), and a sentence saying which.
    Without validation images, the last of the training images fix the thresholds, apart from the statistics'."""
    fit_n, threshold_n = FIT_IMAGES, THRESHOLD_IMAGES
    if limit:
        fit_n, threshold_n = min(fit_n, 10 * limit), min(threshold_n, 10 * limit)
    if val is not None and len(val.labels):
        stats = FitData(train.images[:fit_n], train.labels[:fit_n])
        held = FitData(val.images[:threshold_n], val.labels[:threshold_n])
        where = (f"statistics on {len(stats.labels)} training images (no augmentation), thresholds on "
                 f"{len(held.labels)} validation images")
    else:
        threshold_n = min(threshold_n, len(train.labels) // 2)
        fit_n = min(fit_n, len(train.labels) - threshold_n)
        stats = FitData(train.images[:fit_n], train.labels[:fit_n])
        held = FitData(train.images[-threshold_n:], train.labels[-threshold_n:])
        where = (f"statistics on {len(stats.labels)} training images, thresholds on {len(held.labels)} other "
                 "training images (the run had no validation split: the thresholds are optimistic)")
    return stats, held, where


def fit_data_from(datamodule: Any) -> tuple[FitData, FitData | None]:
    """A data module's training images (as stored: no augmentation) and validation images, for `fit_detector`."""
    datamodule.setup("fit")
    train, val = datamodule.train_set, datamodule.val_set
    return FitData(train.images, train.labels), (FitData(val.images, val.labels) if val is not None else None)


def detector_for(scorer: Any, stored: Any, score: str | None, fit_data: Callable[[], tuple[FitData, FitData | None]],
                 limit: int | None = None) -> tuple[OODDetector | None, str, dict[str, OODDetector]]:
    """The detector for a `Scorer` (vit_mnist.robustness_suite.scoring): the checkpoint's `stored` one (an
    OODDetector or its state) unless `score` names another, else one fitted on the fly on `fit_data()` at the
    module's calibration temperature. Also a sentence saying which, for the reports, and the detectors of the
    other scores fitted on the same images, which the benchmark compares (none for a stored detector). When
    `fit_data()` cannot be read (a `UserError`), no detector (None) and the sentence says why."""
    if stored is not None:
        detector = stored if isinstance(stored, OODDetector) else OODDetector.from_state(stored)
        if score is None or score == detector.score:
            return detector, f"stored in the checkpoint: {detector.describe()}", {}
        why = f"ood_score={score} asks for another score than the stored {detector.score}"
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
    detectors = fit_detectors(lambda images: scorer.outputs(images, features=features), stats, held,
                              scorer.num_classes, SCORES if features else ("msp", "energy") if score != "mahalanobis"
                              else ("mahalanobis",), float(getattr(scorer.module, "temperature", 1.0)))
    detector = detectors.pop(score)
    source = f"fitted on the fly ({why}): {detector.describe()}, {where}"
    log.info("Out-of-domain detector %s", source)
    return detector, source, detectors


# ---- the benchmark -----------------------------------------------------------------------------------------------

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
        self.detectors = {detector.score: detector, **{k: d for k, d in (others or {}).items() if k != detector.score}}
        self.results = {k: OODResult(k, source if k == detector.score else "fitted with it on the same images",
                                     {"out_of_domain": d.ood_threshold, "unsure": d.unsure_threshold})
                        for k, d in self.detectors.items()}
        self.main = detector.score
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
