"""The out-of-domain detector: one score with its statistics and two thresholds, turning a classifier's answers into
verdicts (confident / unsure / out_of_domain); fitted on a run's digits and stored in its checkpoint."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch

from vit_mnist.errors import UserError
from vit_mnist.ood.scores import SCORES, Score
from vit_mnist.ood.scores import check_score as _check_score
from vit_mnist.ood.thresholds import (
    ACCEPTANCE_LEVELS,
    CONFIDENT_PRECISION,
    DIGIT_ACCEPTANCE,
    MAX_ACCEPTANCES,
    MIN_CONFIDENCE,
    acceptance_levels,
    acceptance_threshold,
    confidence_threshold,
    loosest_acceptance,
)

log = logging.getLogger(__name__)

DEFAULT_SCORE = "mahalanobis"  # measured: docs/out_of_domain.md
VERDICTS = ("confident", "unsure", "out_of_domain")
FIT_IMAGES = 5000  # training images for the statistics of a score that has some (Mahalanobis)
THRESHOLD_IMAGES = 5000  # validation images for the thresholds
CHECKPOINT_KEY = "ood_detector"  # a checkpoint's stored detector (its state_dict())

# uint8 images (N, 1, H, W) -> (logits, features or None), as the test computes them
Outputs = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class OODDetector:
    """A score (with its statistics) and the thresholds fixed on validation data: an image scoring above
    `ood_threshold`, or whose calibrated top-1 probability is below `flat_threshold` (0: no such gate), is
    `out_of_domain`; else a top-1 probability below `unsure_threshold` is `unsure`; else `confident`. The
    probabilities it judges are softmax(logits / `temperature`), the calibration it was fitted at. It goes into a
    checkpoint (CHECKPOINT_KEY) as `state_dict()` and comes back with `from_state`."""

    score: Score
    ood_threshold: float
    unsure_threshold: float
    temperature: float = 1.0  # the calibration the msp score and the probabilities use
    info: dict[str, Any] = field(default_factory=dict)  # what it was fitted on (counts, targets)
    flat_threshold: float = 0.0  # an answer barely surer than chance is no digit's (verdict_flat_gate)

    @property
    def name(self) -> str:
        return self.score.name

    @property
    def needs_features(self) -> bool:
        return self.score.needs_features

    def scores(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The outlier score (N,) of images with these logits (and features, for a score that needs them)."""
        return self.score(logits, features, self.temperature)

    def verdicts(self, probs: torch.Tensor, scores: torch.Tensor) -> list[str]:
        """`confident`, `unsure` or `out_of_domain` for each image, from its calibrated probabilities (N, K) and
        its outlier score (N,)."""
        return [VERDICTS[i] for i in self.verdict_codes(probs, scores).tolist()]

    def verdict_codes(self, probs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The verdicts as indices into VERDICTS (N,)."""
        top1 = probs.max(dim=-1).values.double()
        codes = torch.where(top1 < self.unsure_threshold, 1, 0)
        rejected = (scores.double().flatten() > self.ood_threshold) | (top1 < self.flat_threshold)
        return torch.where(rejected, 2, codes)

    def describe_thresholds(self) -> str:
        """The rule in words, with its numbers."""
        flat = f" or below a calibrated top-1 probability of {self.flat_threshold:.6g}" if self.flat_threshold else ""
        return (f"out_of_domain above {self.ood_threshold:.6g}{flat}, unsure below a calibrated top-1 probability of "
                f"{self.unsure_threshold:.6g}")

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.name, "ood_threshold": float(self.ood_threshold),
                "unsure_threshold": float(self.unsure_threshold), "temperature": float(self.temperature),
                "flat_threshold": float(self.flat_threshold), "info": dict(self.info), **self.score.state_dict()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> OODDetector:
        """The detector `state_dict()` saved; a `UserError` when the state is damaged."""
        try:
            numbers = [float(state[k]) for k in ("ood_threshold", "unsure_threshold", "temperature")]
            flat = float(state.get("flat_threshold", 0.0))  # none before the gate existed
            if any(math.isnan(v) for v in numbers) or numbers[2] <= 0 or not 0.0 <= flat < MIN_CONFIDENCE:
                raise ValueError("a threshold is NaN or out of range, or the temperature is not positive")
            score = SCORES[str(state["score"])].from_state(state)
        except (KeyError, TypeError, ValueError):
            raise UserError("The checkpoint's out-of-domain detector is damaged (missing or invalid score, thresholds "
                            "or statistics): the file was edited or comes from another version of vit-mnist. "
                            "Retrain, or give another checkpoint.") from None
        return cls(score, *numbers, info=dict(state.get("info") or {}), flat_threshold=flat)

    def describe(self) -> str:
        return self.score.describe(self.temperature)


def check_score(score: Any) -> str | None:
    """`score` if it names a registered score (None: the default); a `UserError` otherwise."""
    return _check_score(score, DEFAULT_SCORE)


# what the unsure threshold is fixed on: the validation digits as they are, or the same drawn as another writer,
# pen and scanner might have made them (vit_mnist.data.writer_shift): fewer answers confident, and those right more
# often on other people's handwriting (docs/out_of_domain.md#confidence-fixed-on-shifted-digits)
UNSURE_ON = {"clean": "validation digits", "writer_shift": "validation digits drawn as other writers' (writer shift)"}
# what a feature score's statistics (Mahalanobis: class means, shared covariance) are fitted on: the training digits
# as they are, or those and the same drawn as other writers': a digit that is merely shifted, blurred or outlined then
# lies nearer the digits than a letter does (docs/out_of_domain.md#statistics-on-shifted-digits)
STATS_ON = {"clean": "training images (no augmentation)",
            "writer_shift": "training images, with the same drawn as other writers' (writer shift)"}


# VerdictRule's fields in order, as the train and calibrate configs name them
VERDICT_KEYS = ("ood_score", "verdict_unsure_on", "verdict_stats_on", "verdict_flat_gate", "verdict_shift_strength",
                "verdict_max_acceptance")


class VerdictRule(NamedTuple):
    """How a run's detector is fitted (the train and calibrate configs' verdict keys, checked): the score, what the
    unsure threshold and the statistics are fixed on, the flat-softmax gate, the writer shift's strength and the
    loosest digit acceptance the out-of-domain threshold may take."""

    score: str = DEFAULT_SCORE
    unsure_on: str = "clean"
    stats_on: str = "clean"
    flat_gate: float = 0.0
    shift_strength: float = 1.0
    max_acceptance: float = ACCEPTANCE_LEVELS[-1]

    def config_keys(self) -> dict[str, Any]:
        """The rule as the train and calibrate configs name its keys (VERDICT_KEYS)."""
        return dict(zip(VERDICT_KEYS, self))

    def shifted(self, what: str) -> str:
        """How UNSURE_ON/STATS_ON's writer shift reads with this rule's strength (recorded in the detector)."""
        return what if self.shift_strength == 1.0 else what.replace(
            "(writer shift)", f"(writer shift at strength {self.shift_strength:g})")


def check_flat_gate(value: Any) -> float:
    """`value` (None: 0, no gate) as a top-1 probability in [0, MIN_CONFIDENCE); a one-paragraph `UserError`
    otherwise."""
    try:
        gate = 0.0 if value is None else float(value)
    except (TypeError, ValueError):
        gate = math.nan
    if not 0.0 <= gate < MIN_CONFIDENCE:
        raise UserError(f"verdict_flat_gate={value!r} is not a probability in [0, {MIN_CONFIDENCE}): answers whose "
                        "calibrated top-1 probability is below it are out_of_domain (barely surer than chance over "
                        "the classes, e.g. 0.12 for 10 digits); 0 turns the gate off (docs/out_of_domain.md).")
    return gate


def check_shift_strength(value: Any) -> float:
    """`value` (None: 1, the full shift) as a strength in (0, 1]; a one-paragraph `UserError` otherwise."""
    try:
        strength = 1.0 if value is None else float(value)
    except (TypeError, ValueError):
        strength = math.nan
    if not 0.0 < strength <= 1.0:
        raise UserError(f"verdict_shift_strength={value!r} is not in (0, 1]: it scales every range of the writer "
                        "shift that verdict_unsure_on=writer_shift and verdict_stats_on=writer_shift draw the digits "
                        "through (1: the full shift, for a recipe trained with the handwriting augmentation; 0.25: "
                        "`fast`'s milder one; docs/out_of_domain.md).")
    return strength


def check_max_acceptance(value: Any) -> float:
    """`value` (None: the default, ACCEPTANCE_LEVELS' loosest) if it is one of MAX_ACCEPTANCES; a one-paragraph
    `UserError` otherwise."""
    if value is None:
        return ACCEPTANCE_LEVELS[-1]
    try:
        return next(level for level in MAX_ACCEPTANCES if math.isclose(float(value), level))
    except (TypeError, ValueError, StopIteration):
        raise UserError(f"verdict_max_acceptance={value!r} is not one of {list(MAX_ACCEPTANCES)}: the loosest share "
                        "of the validation digits the out-of-domain threshold may accept, where non-digit check "
                        "images show it lets hardly more of them through to `confident` (0.998 by default; 0.999 in "
                        "robust_vit, with its flat gate; docs/out_of_domain.md).") from None


def _checked_digits_on(key: str, value: Any, choices: Mapping[str, str], meaning: str) -> str:
    """`value` (None: clean) if it is one of `choices`; a one-paragraph `UserError` naming `key` otherwise."""
    value = "clean" if value is None else value
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of {list(choices)}: {meaning} (docs/out_of_domain.md).")
    return value


def check_unsure_on(value: Any) -> str:
    """`value` (None: clean) if it is one of UNSURE_ON; a one-paragraph `UserError` otherwise."""
    return _checked_digits_on("verdict_unsure_on", value, UNSURE_ON,
                              "`clean` fixes the confidence threshold of the verdicts on the validation digits as "
                              "they are, `writer_shift` on the same digits drawn as another writer might have made "
                              "them (fewer answers confident, right more often on other people's handwriting)")


def check_stats_on(value: Any) -> str:
    """`value` (None: clean) if it is one of STATS_ON; a one-paragraph `UserError` otherwise."""
    return _checked_digits_on("verdict_stats_on", value, STATS_ON,
                              "`clean` fits the detector's statistics on the training digits as they are, "
                              "`writer_shift` on those and the same digits drawn as another writer might have made "
                              "them (fewer shifted or corrupted digits rejected, non-digits told `unsure` a little "
                              "more often)")


def check_verdict_options(cfg: Mapping[str, Any]) -> VerdictRule:
    """The verdict keys of a train or calibrate config (`ood_score`, `verdict_unsure_on`, `verdict_stats_on`,
    `verdict_flat_gate`, `verdict_shift_strength`, `verdict_max_acceptance`), checked before any work: the rule they
    make, or a one-paragraph `UserError` for the first bad one. A score the network cannot compute is swapped later,
    where the network is known."""
    checks = (lambda v: check_score(v) or DEFAULT_SCORE, check_unsure_on, check_stats_on, check_flat_gate,
              check_shift_strength, check_max_acceptance)  # one for each of VERDICT_KEYS
    return VerdictRule(*(check(cfg.get(key)) for check, key in zip(checks, VERDICT_KEYS)))


class ConfidenceDigits(NamedTuple):
    """The network's answers to digits the unsure threshold is fixed on, when not the thresholds' own images (e.g.
    the same drawn as another writer might have made them): logits (N, C), labels (N,), and what they are."""

    logits: torch.Tensor
    labels: torch.Tensor
    description: str


@dataclass
class FitData:
    """Digits a detector is fitted on: images (uint8 (N, 1, H, W)) and their labels."""

    images: torch.Tensor
    labels: torch.Tensor


def fit_detectors(outputs: Outputs, stats: FitData, thresholds: FitData, num_classes: int,
                  scores: Sequence[str] = tuple(SCORES), temperature: float = 1.0,
                  held_outputs: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                  outliers: torch.Tensor | None = None,
                  confidence_on: ConfidenceDigits | None = None,
                  flat_gate: float = 0.0, max_acceptance: float = ACCEPTANCE_LEVELS[-1]) -> dict[str, OODDetector]:
    """A detector for each of `scores`, from one pass over each set of digits: the statistics on `stats`, the
    thresholds on `thresholds` (disjoint digits: a score fitted and thresholded on the same images would accept
    them too easily). `outputs` maps uint8 images to (logits, features); `held_outputs`, when given, are the
    thresholds' images' already (the after-fit step's one pass over validation). With `outliers` (uint8 non-digit
    check images, never a benchmark's or a training pool's), the score accepts more than DIGIT_ACCEPTANCE of the
    digits where that lets hardly more of them through to `confident` (`loosest_acceptance`, up to
    `max_acceptance`). `confidence_on` fixes the unsure threshold on other digits than the thresholds' own
    (`ConfidenceDigits`); `flat_gate` is the detectors' `flat_threshold`. A score that needs features is left out
    when the network gives none, unless it is the only one asked for (a `UserError`)."""
    chosen = {name: SCORES[name]() for name in scores}
    needing = [name for name, s in chosen.items() if s.needs_features]
    if needing:
        _, features = outputs(stats.images)
        if features is None and len(needing) == len(chosen):
            raise UserError(f"This network gives no features, so the {' and '.join(needing)} score cannot be fitted: "
                            "choose ood_score="
                            + " or ood_score=".join(n for n in SCORES if not SCORES[n].needs_features) + ".")
        for name in needing:
            if features is None:
                del chosen[name]
            else:
                chosen[name].fit(features, stats.labels, num_classes)
    logits, features = held_outputs if held_outputs is not None else outputs(thresholds.images)
    sure_logits, sure_labels, unsure_on = confidence_on or ConfidenceDigits(logits, thresholds.labels,
                                                                            "validation digits")
    top1, preds = (sure_logits.double() / temperature).softmax(dim=-1).max(dim=-1)
    unsure = confidence_threshold(top1, preds == sure_labels.to(preds.device))
    info = {"threshold_images": len(thresholds.labels), "confident_precision": CONFIDENT_PRECISION,
            "unsure_fixed_on": unsure_on}
    checked = outputs(outliers) if outliers is not None and len(outliers) else None
    detectors = {}
    for name, score in chosen.items():
        detector = OODDetector(score, math.nan, unsure, float(temperature),
                               {"statistics_images": len(stats.labels) if score.needs_features else 0, **info},
                               float(flat_gate))
        digit_scores, acceptance = detector.scores(logits, features), DIGIT_ACCEPTANCE
        if checked is not None:
            sure = (checked[0].double() / temperature).softmax(dim=-1).max(dim=-1).values >= unsure
            acceptance, share = loosest_acceptance(digit_scores, detector.scores(*checked), sure,
                                                   acceptance_levels(max_acceptance))
            detector.info.update({"outlier_check_images": len(outliers), "outlier_check_confident": share})
        detector.ood_threshold = acceptance_threshold(digit_scores, acceptance)
        detector.info["digit_acceptance"] = acceptance
        detectors[name] = detector
    return detectors


def fit_detector(outputs: Outputs, stats: FitData, thresholds: FitData, num_classes: int,
                 score: str = DEFAULT_SCORE, temperature: float = 1.0,
                 held_outputs: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                 outliers: torch.Tensor | None = None,
                 confidence_on: ConfidenceDigits | None = None,
                 flat_gate: float = 0.0, max_acceptance: float = ACCEPTANCE_LEVELS[-1]) -> OODDetector:
    """The detector for `score` (see `fit_detectors`)."""
    return fit_detectors(outputs, stats, thresholds, num_classes, (score,), temperature, held_outputs,
                         outliers, confidence_on, flat_gate, max_acceptance)[score]


def split_fit_data(train: FitData, val: FitData | None, limit: int | None = None,
                   also_shifted: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> tuple[FitData, FitData, str]:
    """The training images for the statistics and the validation images for the thresholds (each capped at
    FIT_IMAGES / THRESHOLD_IMAGES, `limit` x 10 when given: a debug run's few), and a sentence saying which.
    Without validation images, the last of the training images fix the thresholds, apart from the statistics'.
    `also_shifted` (uint8 images -> the same drawn as other writers', for verdict_stats_on=writer_shift) adds those
    copies of the statistics' digits, with their labels."""
    fit_n, threshold_n = FIT_IMAGES, THRESHOLD_IMAGES
    if limit:
        fit_n, threshold_n = min(fit_n, 10 * limit), min(threshold_n, 10 * limit)
    has_val = val is not None and len(val.labels)
    if not has_val:
        threshold_n = min(threshold_n, len(train.labels) // 2)
        fit_n = min(fit_n, len(train.labels) - threshold_n)
    stats = FitData(train.images[:fit_n], train.labels[:fit_n])
    described = f"statistics on {len(stats.labels)} {STATS_ON['clean' if also_shifted is None else 'writer_shift']}"
    if also_shifted is not None:
        stats = FitData(torch.cat([stats.images, also_shifted(stats.images)]), torch.cat([stats.labels] * 2))
    if has_val:
        held = FitData(val.images[:threshold_n], val.labels[:threshold_n])
        where = f"{described}, thresholds on {len(held.labels)} validation images"
    else:
        held = FitData(train.images[-threshold_n:], train.labels[-threshold_n:])
        where = (f"{described}, thresholds on {len(held.labels)} other training images (the run had no validation "
                 "split: the thresholds are optimistic)")
    return stats, held, where


def fit_data_from(datamodule: Any) -> tuple[FitData, FitData | None]:
    """A data module's training images (as stored: no augmentation) and validation images, for `fit_detector`."""
    datamodule.setup("fit")
    train, val = datamodule.train_set, datamodule.val_set
    return FitData(train.images, train.labels), (FitData(val.images, val.labels) if val is not None else None)
