"""Callbacks the train entry always adds: timing of the training loop for throughput figures."""

from __future__ import annotations

import time

from lightning import Callback


class TrainThroughput(Callback):
    """Wall time and images inside the training loop: data pipeline and augmentation included, validation not."""

    def __init__(self) -> None:
        self.train_time = 0.0
        self.images = 0
        self._epoch_start: float | None = None
        self._val_start: float | None = None
        self._val_time = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start, self._val_time = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += int(batch[0].shape[0]) * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_start is not None and self._epoch_start is not None:
            self._val_time += time.perf_counter() - self._val_start
        self._val_start = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Validation runs inside the training epoch (before this hook), so its time is taken out.
        if self._epoch_start is not None:
            self.train_time += time.perf_counter() - self._epoch_start - self._val_time
            self._epoch_start = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_time if self.train_time > 0 else 0.0
