"""The data: datasets and their files, the LightningDataModule, augmentation, corruptions, preprocessing of images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vit_mnist.data.datamodule import InMemoryDataset, MNISTDataModule, load_split

__all__ = ["InMemoryDataset", "MNISTDataModule", "load_split"]


def __getattr__(name: str) -> Any:
    """`vit_mnist.data.MNISTDataModule` (the `_target_` of conf/data/*.yaml and of every run folder's
    .hydra/config.yaml), `InMemoryDataset` and `load_split` from datamodule.py, imported on first use: it pulls in
    Lightning, which idx.py, sources.py, preprocess.py and corruptions.py do without."""
    if name in __all__:
        from vit_mnist.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'vit_mnist.data' has no attribute {name!r}")
