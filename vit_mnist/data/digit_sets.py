"""Digit sets that reach a model the way a user's digits do, through predict's preprocessing (MNIST models only)."""

from __future__ import annotations

import torch

from vit_mnist.data.other_writers import DESCRIPTION as OTHER_WRITERS
from vit_mnist.data.other_writers import load_other_writers
from vit_mnist.data.pen_photos import DESCRIPTION as PEN_PHOTOS
from vit_mnist.data.pen_photos import PEN_PHOTOS_IMAGES, make_pen_photos
from vit_mnist.data.sources import is_handwritten

# name -> (row label in reports, what it is); each is reported apart from the corruption mean (mCA)
DIGIT_SETS = {"other_writers": ("other writers", OTHER_WRITERS), "pen_photos": ("pen photos", PEN_PHOTOS)}


def digit_sets_for(dataset: str) -> list[str]:
    """The DIGIT_SETS that are a fair test of a model trained on `dataset`: all of them for handwritten digits."""
    return list(DIGIT_SETS) if is_handwritten(dataset) else []


def load_digit_set(name: str, images: torch.Tensor, labels: torch.Tensor, seed: int, limit: int | None = None,
                   pen_photos: int = PEN_PHOTOS_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """One of DIGIT_SETS as uint8 (N, 1, 28, 28) images in the MNIST layout and their labels; `limit` keeps the
    first N (a debug run's few): other writers from the UCI set, pen photos drawn from the first `pen_photos` of
    `images` (MNIST's test digits)."""
    if name == "other_writers":
        return load_other_writers(limit)
    count = pen_photos if limit is None else min(limit, pen_photos)
    return make_pen_photos(images[:count], seed), labels[:count]
