"""Digits from writers outside MNIST: the UCI optical-digits set, put through the deployment's preprocessing."""

from __future__ import annotations

import functools

import numpy as np
import torch

from vit_mnist.data.preprocess import to_mnist_layout
from vit_mnist.errors import UserError

DESCRIPTION = ("UCI optical recognition of handwritten digits (scikit-learn's copy: 1,797 digits from NIST forms by 43 "
               "people, a collection apart from MNIST's, 8x8 scans), through predict's preprocessing")


@functools.lru_cache(maxsize=4)
def load_other_writers(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (1797, 1, 28, 28) white-on-black digits and their int64 labels (the first `limit` of them if given).

    The set ships inside scikit-learn (no download): NIST-form digits by 43 people, normalised to 32x32
    bitmaps and scanned down to 8x8 counts of ink (0-16). Each digit takes the same path as a user's image in
    `predict` and the web app (layout=full: crop to the ink, fit 20x20, centre by mass), so the accuracy on
    it says how a model reads handwriting it was not trained on, at a low scan resolution.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # a dependency of the project; only a broken install lands here
        raise UserError("The other-writers check needs scikit-learn, which holds its digits: pip install "
                        "scikit-learn (it is one of vit-mnist's dependencies; reinstall the project), or set "
                        "other_writers=false.") from e
    digits = load_digits()
    scans = np.rint(digits.images[:limit] * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([to_mnist_layout(scan, layout="full") for scan in scans])
    return torch.from_numpy(images)[:, None], torch.from_numpy(digits.target[:limit].astype(np.int64))
