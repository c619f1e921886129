"""The benchmark assembled once, for a training run's tested weights and for the robustness command alike: a model
entry (scorer, detector, seen corruptions) per checkpoint, then the suite, the digit sets and the non-digit sets."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from vit_mnist.data.non_digits import load_non_digit_sets
from vit_mnist.data.pen_photos import PEN_PHOTOS_IMAGES
from vit_mnist.ood.detector import FitData
from vit_mnist.robustness_suite.ood_benchmark import detector_for
from vit_mnist.robustness_suite.scoring import (
    ModelEntry,
    ModelResult,
    Scorer,
    run_suite,
)
from vit_mnist.robustness_suite.suite import CorruptionSpec, seen_names


def model_entry(name: str, source: str, module: Any, mean: float, std: float, device: torch.device, num_classes: int,
                batch_size: int, suite: Sequence[CorruptionSpec], augment: dict | None,
                fit_data: Callable[[], tuple[FitData, FitData | None]], *, tta: bool | None = None, ood: bool = True,
                stored_detector: Any = None, ood_score: str | None = None, limit: int | None = None) -> ModelEntry:
    """A trained module ready for `run_benchmark`: scored with its normalisation and (unless `tta` says otherwise)
    its own test-time shifts on `device`; with `ood`, the detector `stored_detector` (a checkpoint's state or an
    OODDetector), else one fitted on the fly on `fit_data()` (`ood_score` picks another score)."""
    tta = bool(module.hparams.get("tta", False)) if tta is None else tta
    scorer = Scorer(module, mean, std, tta, device, num_classes, batch_size)
    if ood:
        scorer.detector, scorer.detector_source, scorer.others = detector_for(scorer, stored_detector, ood_score,
                                                                              fit_data, limit)
    return ModelEntry(name, source, scorer, seen_names(suite, augment), module.num_parameters, module.arch)


def run_benchmark(entries: Sequence[ModelEntry], images: torch.Tensor, labels: torch.Tensor,
                  suite: Sequence[CorruptionSpec], seed: int, dataset: str, data_dir: str, *,
                  digit_sets: Sequence[str] = (), limit: int | None = None, examples: int = 6, ood: bool = True,
                  download: bool = False, pen_photos: int = PEN_PHOTOS_IMAGES
                  ) -> tuple[list[ModelResult], dict[str, torch.Tensor]]:
    """Every entry on the clean test images, each corruption of `suite`, the `digit_sets` and (with `ood`, for the
    entries with a detector) the non-digit sets of `dataset`; `limit` keeps the first N images of each set;
    `pen_photos` test digits are photographed for that digit set.
    Returns the results and the example images for the reports."""
    notes = [f"{e.name}: {e.scorer.detector_source}" for e in entries if ood and e.scorer.detector is None]
    non_digits: dict[str, torch.Tensor] = {}
    if ood:
        non_digits, more = load_non_digit_sets(dataset, data_dir, limit, seed, download)
        notes += more
    return run_suite(entries, images, labels, suite, seed, examples, digit_sets, digit_set_limit=limit,
                     non_digit_sets=non_digits, ood_notes=notes, pen_photos=pen_photos)
