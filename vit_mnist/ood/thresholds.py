"""The detector's two thresholds, fixed on validation digits: the outlier score digits stay under, and the
confidence above which answers are right often enough."""

from __future__ import annotations

import math

import torch

DIGIT_ACCEPTANCE = 0.99  # validation digits that are not out_of_domain
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
