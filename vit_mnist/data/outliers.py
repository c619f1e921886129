"""The pool of non-digit images that outlier exposure trains on: made once from the `split="training"` streams."""

from __future__ import annotations

import logging
import time

import torch

from vit_mnist.data.image_cache import cached_non_digits
from vit_mnist.data.non_digits import non_digit_sets_for
from vit_mnist.errors import UserError

log = logging.getLogger(__name__)


class OutlierPool:
    """`count` images of each of `sets` (None: every non-digit set outside `dataset`'s domain), uint8 (N, 1, 28, 28)
    in MNIST's layout, made by `make_non_digits(..., split="training")`: other random streams and other files than
    the benchmark's, so no benchmark image is ever trained on. `draw` gives `batch_size` of them at random. With a
    `cache_dir`, a pool made once is read from there by every later run (vit_mnist.data.image_cache)."""

    def __init__(self, dataset: str, sets: list[str] | None, count: int, batch_size: int, seed: int = 0,
                 cache_dir: str | None = None) -> None:
        self.dataset, self.count, self.batch_size, self.seed = dataset, int(count), int(batch_size), int(seed)
        self.cache_dir = cache_dir
        allowed = non_digit_sets_for(dataset)
        self.sets = list(allowed if sets is None else sets)
        wrong = [name for name in self.sets if name not in allowed]
        if wrong or not self.sets:
            raise UserError(f"outlier_exposure.sets={self.sets} must be a non-empty list of the non-digit sets "
                            f"outside data={dataset}'s domain, from {allowed} (null: all of them), e.g. "
                            "'outlier_exposure.sets=[letters,shapes]'. A set of the model's own kind would teach it "
                            "that its own images are outliers.")
        self.images: torch.Tensor | None = None  # the pool, on the CPU, made by `build`
        self.names: list[str] = []  # the sets that made it in (a dataset's files may be missing)
        self._on_device: torch.Tensor | None = None

    def build(self, data_dir: str | None) -> torch.Tensor:
        """Make the pool once (later calls return it): each set's first `count` training-stream images. A set of
        another dataset's images whose files are missing is left out with a warning; none left is a `UserError`."""
        if self.images is not None:
            return self.images
        started, parts, make = time.perf_counter(), [], cached_non_digits(self.cache_dir)
        for name in self.sets:
            try:
                parts.append(make(name, self.count, self.seed, "training", None if data_dir is None else str(data_dir)))
                self.names.append(name)
            except UserError as e:
                log.warning("Outlier exposure leaves out the set %s: %s", name, e)
        if not parts:
            raise UserError(f"Outlier exposure has no images: none of outlier_exposure.sets={self.sets} could be "
                            "made. Name generated sets (letters, scribbles, shapes, noise), or put the other "
                            "dataset's files into the data folder.")
        self.images = torch.cat(parts)
        log.info("Outlier exposure: a pool of %d non-digit images (%s, training streams) %s in %.1f s; %d per step",
                 len(self.images), ", ".join(self.names), "made" if self.cache_dir is None else "made or read "
                 f"from {self.cache_dir}", time.perf_counter() - started, self.batch_size)
        return self.images

    def draw(self, device: torch.device) -> torch.Tensor:
        """`batch_size` pool images at random (uint8, on `device`), with torch's global random stream there: each
        rank of a DDP run has its own stream (RankSeed), so each draws its own outliers from the same pool."""
        if self.images is None:
            raise RuntimeError("OutlierPool.build must run before draw (the datamodule's setup builds it)")
        if self._on_device is None or self._on_device.device != torch.device(device):
            self._on_device = self.images.to(device)  # a few MB, moved once
        pick = torch.randint(len(self._on_device), (self.batch_size,), device=self._on_device.device)
        return self._on_device[pick]
