"""vit-mnist: Vision Transformers on MNIST-family datasets with PyTorch Lightning and Hydra."""

from importlib import metadata as _metadata
from typing import Any

import torch

try:  # the installed distribution's version, so that it cannot drift from pyproject.toml
    __version__ = _metadata.version("vit-mnist")
except _metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"

# TF32 matrix multiplies on GPUs that have them (Ampere and later), set here because every entry imports the
# package first: train's and evaluate's main(), the Hydra task function that the SLURM launcher calls directly,
# and the benchmark, which then measures what training runs. CPUs without a TF32 path compute as before.
torch.set_float32_matmul_precision("high")


def __getattr__(name: str) -> Any:
    """The Python API (`from vit_mnist import load_model`), imported on first use: it pulls in Lightning."""
    if name in ("Classifier", "Predictions", "load_model"):
        from vit_mnist import api

        return getattr(api, name)
    raise AttributeError(f"module 'vit_mnist' has no attribute {name!r}")
