"""The detector's two thresholds, fixed on validation digits: the outlier score digits stay under (as many of them
as non-digit check images allow), and the confidence above which answers are right often enough."""

from __future__ import annotations

import math

import torch

DIGIT_ACCEPTANCE = 0.99  # validation digits that are not out_of_domain, at least
# Looser acceptances tried, when non-digit check images show the score's tail catches none of them that the softmax
# lets through (a model trained with outlier exposure): fewer real digits called out_of_domain (docs/out_of_domain.md)
ACCEPTANCE_LEVELS = (DIGIT_ACCEPTANCE, 0.995, 0.998)
# and one looser, for a rule that allows it (verdict_max_acceptance): where the flat-softmax gate and a confidence
# fixed on shifted digits already keep the non-digits out of `confident`, the score rejects fewer real digits
MAX_ACCEPTANCES = (*ACCEPTANCE_LEVELS, 0.999)
OUTLIER_CONFIDENT_RISE = 0.01  # the most of the check non-digits a looser acceptance may add to `confident`
CONFIDENT_PRECISION = 0.998  # validation digits called confident that are right
MIN_CONFIDENCE = 0.5  # below this calibrated top-1 probability an answer is never confident


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


def acceptance_levels(max_acceptance: float = ACCEPTANCE_LEVELS[-1]) -> tuple[float, ...]:
    """The acceptances tried, from the floor up to `max_acceptance` (one of MAX_ACCEPTANCES)."""
    return tuple(level for level in MAX_ACCEPTANCES if level <= max_acceptance + 1e-12)


def loosest_acceptance(digit_scores: torch.Tensor, outlier_scores: torch.Tensor, outlier_sure: torch.Tensor,
                       levels: tuple[float, ...] = ACCEPTANCE_LEVELS, rise: float = OUTLIER_CONFIDENT_RISE
                       ) -> tuple[float, float]:
    """The highest of `levels` (digit acceptances, rising; the first is the floor) at which at most `rise` more of
    the non-digit check images are answered `confident` than at the floor: sure (`outlier_sure`: top-1 at or above
    the unsure threshold) and scoring at or under that acceptance's threshold on `digit_scores`. Returns it and the
    share of the check images answered `confident` there."""
    sure, scores = outlier_sure.bool().flatten(), outlier_scores.double().flatten()
    shares = [float((sure & (scores <= acceptance_threshold(digit_scores, level))).double().mean()) for level in levels]
    chosen = 0
    while chosen + 1 < len(levels) and shares[chosen + 1] - shares[0] <= rise + 1e-12:
        chosen += 1
    return levels[chosen], shares[chosen]
