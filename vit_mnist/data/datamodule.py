"""The MNIST-family LightningDataModule: whole dataset in memory as uint8, augmented and normalised on the device."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from vit_mnist.data.augment import AugmentConfig
from vit_mnist.data.augment import augment as augment_batch
from vit_mnist.data.crop_warmup import crop_warmup_from
from vit_mnist.data.idx import read_images, read_labels
from vit_mnist.data.outliers import OutlierPool
from vit_mnist.data.samplers import eval_sampler
from vit_mnist.data.sources import SPLIT_FILES, DatasetSpec, ensure_files, get_spec
from vit_mnist.errors import UserError


class InMemoryDataset(Dataset):
    """uint8 images (N, 1, H, W) and int64 labels; `__getitems__` fetches a whole batch with one index op."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, device="cpu")  # the dataset's tensors stay on the CPU; batches move later
        return self.images[idx], self.labels[idx]


def keep_batch(batch: Any) -> Any:
    """Collate function for `__getitems__` datasets: the batch is already stacked."""
    return batch


def load_split(name: str, data_dir: str, split: str, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one official split ("train" or "test") as uint8 images (N, 1, H, W) and int64 labels."""
    spec = get_spec(name)
    files = ensure_files(spec, data_dir, download=download)
    image_file, label_file = (files[stem] for stem in SPLIT_FILES[split])
    images = read_images(image_file, spec.image_size)
    labels = read_labels(label_file, len(spec.classes))
    if len(images) != len(labels):
        raise UserError(
            f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels: "
            "the two files do not belong together. Copy both again from the same source."
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def check_styles(augment: AugmentConfig, spec: DatasetSpec) -> None:
    """Refuse the writing styles (flagged 1s, crossed 7s) on a dataset whose classes are not handwritten digits."""
    if augment.styles and not spec.handwritten:
        raise UserError(f"data.augment.styles={augment.styles} draws flagged 1s and crossed 7s, which only means "
                        f"something for handwritten digits, not for data={spec.name} (its classes 1 and 7 are "
                        f"{spec.classes[1]!r} and {spec.classes[7]!r}): set data.augment.styles=0.")


def check_loader_options(batch_size: int, eval_batch_size: int, val_size: int, num_workers: int) -> None:
    """`UserError` unless the batch sizes are positive and the validation size and worker count are not negative."""
    if batch_size < 1 or eval_batch_size < 1 or val_size < 0 or num_workers < 0:
        raise UserError(
            f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} must be positive, "
            f"data.val_size={val_size} and data.num_workers={num_workers} must not be negative "
            "(num_workers=0 loads in the main process, the default: the dataset is already in memory)."
        )


class MNISTDataModule(LightningDataModule):
    """MNIST or Fashion-MNIST: official train split into train/val with a fixed seed, official test untouched."""

    def __init__(
        self,
        name: str = "mnist",
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 100,
        val_size: int = 5000,
        split_seed: int = 12345,
        num_workers: int = 0,
        download: bool = True,
        augment: dict | None = None,
        crop_warmup: dict | None = None,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
    ):
        super().__init__()
        self.spec = get_spec(name)
        if (image_size, num_classes, in_channels) != (self.spec.image_size, len(self.spec.classes), 1):
            raise UserError(
                f"data.image_size={image_size}, data.num_classes={num_classes}, data.in_channels={in_channels} "
                f"do not describe {name} ({self.spec.image_size}x{self.spec.image_size}, "
                f"{len(self.spec.classes)} classes, 1 channel). Leave these keys at the defaults of `data={name}`."
            )
        check_loader_options(batch_size, eval_batch_size, val_size, num_workers)
        self.save_hyperparameters(logger=False)
        self.augment = AugmentConfig(**(augment or {}))
        self.crop_warmup = crop_warmup_from(crop_warmup)  # checked against the network by the run's checks
        check_styles(self.augment, self.spec)
        self.data_dir = data_dir
        self.train_set: InMemoryDataset | None = None
        self.val_set: InMemoryDataset | None = None
        self.test_set: InMemoryDataset | None = None
        # outlier exposure (vit_mnist.training.outlier_exposure): non-digits added to each training batch
        self.outliers: OutlierPool | None = None

    def attach_outliers(self, pool: OutlierPool | None) -> None:
        """Add `pool.draw()` to every training batch as a third element, through the same `transform` as the digits;
        the pool is made in `setup("fit")`. Validation, test and prediction batches never get any."""
        self.outliers = pool

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def mean(self) -> float:
        return self.spec.mean

    @property
    def std(self) -> float:
        return self.spec.std

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place that may download.
        ensure_files(self.spec, self.data_dir, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            images, labels = load_split(self.spec.name, self.data_dir, "train", download=False)
            val_size = self.hparams.val_size
            if val_size >= len(labels):
                raise UserError(
                    f"data.val_size={val_size} leaves no training images: the train split has {len(labels)}. "
                    f"Choose a smaller validation set."
                )
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed),
                                   device="cpu")
            train_idx, val_idx = order[val_size:], order[:val_size]
            self.train_set = InMemoryDataset(images[train_idx], labels[train_idx])
            self.val_set = InMemoryDataset(images[val_idx], labels[val_idx])
        if self.outliers is not None and stage in (None, "fit"):
            self.outliers.build(self.data_dir)
        if self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = InMemoryDataset(*load_split(self.spec.name, self.data_dir, "test", download=False))

    def _loader(self, dataset: InMemoryDataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() must run before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size if train else self.hparams.eval_batch_size,
            shuffle=train,
            # with several processes each evaluates its own share, none repeated (vit_mnist.data.samplers)
            sampler=None if train else eval_sampler(dataset, self.trainer),
            drop_last=train and len(dataset) > self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=keep_batch,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        # augmented at full size, then cut: a shifted or turned digit brings its strokes in from the margin
        crop = self.crop_warmup.crop if training and self.crop_warmup.applies(self.trainer) else None
        if training and self.outliers is not None:
            # the same path as the digits, in the same call (one augmentation pass per step, not two): augmented,
            # normalised, converted; then apart again
            outliers = self.outliers.draw(images.device)
            no_digit = torch.full((len(outliers),), -1, dtype=labels.dtype, device=labels.device)
            x = self._model_input(torch.cat([images, outliers]), True, torch.cat([labels, no_digit]))
            x = crop(x) if crop else x
            return x[:len(labels)], labels, x[len(labels):]
        x = self._model_input(images, training, labels)
        return (crop(x) if crop else x), labels

    def _model_input(self, images: torch.Tensor, train: bool, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.transform(images, train=train, labels=labels)
        if self.trainer is not None:  # Lightning converts batches before this hook: uint8 stays, so convert the
            x = self.trainer.precision_plugin.convert_input(x)  # floats here (bf16 under bf16-true; else as is)
        return x

    def transform(self, images: torch.Tensor, train: bool = False, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, 1, H, W) on any device -> normalised float; augmented only when `train` (the writing styles
        only where `labels` are given)."""
        x = images.float().div_(255.0)
        if train:
            x = augment_batch(x, self.augment, labels=labels)
        return (x - self.spec.mean) / self.spec.std
