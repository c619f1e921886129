"""Outlier exposure (Hendrycks et al., ICLR 2019): non-digit images in each training batch, taught a uniform answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vit_mnist.data.outliers import OutlierPool
from vit_mnist.errors import UserError, find_user_error


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The cross-entropy from the uniform distribution to softmax(logits), averaged over the batch: the mean over
    the classes of -log_softmax (log(num_classes) at its lowest, when every class gets the same probability)."""
    return -F.log_softmax(logits.float(), dim=-1).mean(dim=-1).mean()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class OutlierExposure:
    """The `outlier_exposure` config: the loss `weight` (0: off), the non-digit `sets` (None: every one outside the
    dataset's domain), `count` images of each in the pool, `batch_size` of them in each training step, the
    pool's `seed` (its training streams), the folder it is cached in (`cache_dir`; None: made in every run)."""

    weight: float = 0.0
    sets: list[str] | None = None
    count: int = 1000
    batch_size: int = 32
    seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not _number(self.weight) or not 0.0 <= self.weight <= 10.0:
            raise UserError(f"outlier_exposure.weight={self.weight!r} must be a number in [0, 10]: the weight of the "
                            "loss that pushes non-digit images towards a uniform answer (Hendrycks et al. use 0.5; "
                            "0 turns outlier exposure off).")
        for key in ("count", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"outlier_exposure.{key}={value!r} must be a positive whole number: count is the "
                                "number of images of each non-digit set in the pool (e.g. 1000), batch_size the "
                                "number of them added to each training batch (e.g. 32).")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UserError(f"outlier_exposure.seed={self.seed!r} must be a whole number: it picks the pool's "
                            "images within the non-digit sets' training streams.")
        if self.sets is not None:  # the names are checked against the dataset by the pool (OutlierPool)
            self.sets = [self.sets] if isinstance(self.sets, str) else list(self.sets)

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def pool(self, dataset: str) -> OutlierPool:
        """The pool of non-digit images for a model of `dataset` (made by the datamodule's setup)."""
        return OutlierPool(dataset, self.sets, self.count, self.batch_size, self.seed, self.cache_dir)

    def hparams(self, pool: OutlierPool) -> dict[str, Any]:
        """What the module and its checkpoint record: these settings with `pool`'s sets resolved."""
        return {**{k: v for k, v in asdict(self).items() if k != "cache_dir"}, "sets": pool.sets}


def outlier_exposure_from(cfg: DictConfig | None, dataset: str) -> OutlierExposure | None:
    """The run's `outlier_exposure` (its `_target_` instantiated) when its weight is above 0, else None; a
    `UserError` naming the key for a bad setting, a set name included (checked against `dataset`)."""
    if not cfg:
        return None
    try:
        oe = hydra.utils.instantiate(cfg, _convert_="all")
    except InstantiationException as e:
        cause = find_user_error(e)
        if cause is not None:
            raise cause from e
        raise UserError(f"Cannot build outlier_exposure from {dict(cfg)}: {e.__cause__ or e}. Its keys are weight, "
                        "sets, count, batch_size, seed and cache_dir (conf/train.yaml).") from e
    if not isinstance(oe, OutlierExposure):
        raise UserError(f"outlier_exposure._target_ must build a vit_mnist.training.outlier_exposure.OutlierExposure,"
                        f" not {type(oe).__name__}: leave the _target_ of conf/train.yaml as it is.")
    oe.pool(dataset)  # the set names against the dataset's domain
    return oe if oe.enabled else None
