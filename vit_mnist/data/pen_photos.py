"""Test digits redrawn with a fine pen on unevenly lit paper and put through predict's preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from skimage.morphology import disk, skeletonize

from vit_mnist.data.preprocess import load_image, to_mnist_layout

DESCRIPTION = ("the first test digits (1,000 by default) redrawn along their centre line with a fine pen (0.4-0.9 px "
               "wide in MNIST's 20-pixel box) as dark ink on unevenly lit, noisy paper at 8x the resolution, through "
               "predict's preprocessing")
SCALE = 8  # photo pixels per MNIST pixel: a 224x224 photo, the digit about 160 pixels tall
PEN_RADII = (1, 2, 3)  # pen half-widths in photo pixels: lines 3 to 7 pixels wide
PEN_PHOTOS_IMAGES = 1000  # how many first test digits the benchmark photographs by default (about 8 s on one core)


def pen_photo(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uint8 (28, 28) MNIST digit -> a float (224, 224) grey photo of it written with a fine pen.

    The digit's shape is kept (its centre line, from the enlarged digit's skeleton); what changes is what a
    phone photo of a note changes: stroke width, dark ink on light paper, a lighting gradient, sensor noise.
    """
    size = digit.shape[0] * SCALE
    shape = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR)) > 127
    radius = int(rng.choice(PEN_RADII))
    pen = ndimage.binary_dilation(skeletonize(shape), structure=disk(radius))
    ink = ndimage.gaussian_filter(pen.astype(np.float64), 0.8)  # the pen's soft edge and the lens
    rows, cols = np.mgrid[0:size, 0:size] / size
    paper = rng.uniform(190, 235) + rng.uniform(-25, 25) * rows + rng.uniform(-25, 25) * cols
    photo = paper * (1 - ink) + rng.uniform(20, 100) * ink + rng.normal(0.0, 4.0, ink.shape)
    return np.clip(photo, 0, 255)


def make_pen_photos(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) MNIST digits -> uint8 (N, 1, 28, 28): each one's pen photo as predict would see it.

    Deterministic for a seed. Each photo takes the path of a user's image in `predict` and the web app
    (layout=full: invert, crop to the ink, stroke width to MNIST's, fit 20x20, centre by mass).
    """
    rng = np.random.default_rng(seed)
    out = [to_mnist_layout(load_image(pen_photo(digit, rng)), layout="full") for digit in images[:, 0].numpy()]
    return torch.from_numpy(np.stack(out))[:, None]
