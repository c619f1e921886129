"""Small synthetic MNIST-format datasets for tests: class-dependent patterns written as real IDX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vit_mnist.data.idx import write_idx
from vit_mnist.data.preprocess import to_mnist_layout
from vit_mnist.data.sources import SPLIT_FILES, get_spec


def pattern_images(labels: np.ndarray, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A stripe pattern over the whole image whose angle (18 degrees apart) encodes the class, with random
    phase, contrast and noise: every patch carries the class, so even a tiny ViT learns it in seconds."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((len(labels), size, size))
    for i, label in enumerate(labels):
        angle = np.deg2rad(18.0 * int(label))
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / 7.0) + rng.uniform(0, 2 * np.pi))
        images[i] = 128 + rng.uniform(70, 127) * wave + rng.normal(0, 12, size=(size, size))
    return images.clip(0, 255).astype(np.uint8)


def write_dataset(root: str | Path, name: str = "mnist", n_train: int = 800, n_test: int = 200,
                  gz: bool = False, seed: int = 0) -> Path:
    """Write the four IDX files of dataset `name` under `root/<Folder>/raw/`; return `root`."""
    spec = get_spec(name)
    rng = np.random.default_rng(seed)
    raw = Path(root) / spec.folder / "raw"
    for split, count in (("train", n_train), ("test", n_test)):
        labels = (np.arange(count) % len(spec.classes)).astype(np.uint8)
        rng.shuffle(labels)
        image_file, label_file = SPLIT_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(raw / f"{image_file}{suffix}", pattern_images(labels, rng))
        write_idx(raw / f"{label_file}{suffix}", labels)
    return Path(root)


def laid_out(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) images put through predict's full layout (fitted to 20x20, centred by mass): the
    synthetic patterns fill their frame, and a 28x28 file must be in MNIST's layout to be used as it is."""
    return torch.from_numpy(np.stack([to_mnist_layout(image.numpy(), "full") for image in images[:, 0]]))[:, None]
