"""Building what a config's `_target_` groups describe: callbacks, loggers and the Lightning Trainer."""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from vit_mnist.errors import UserError, find_user_error
from vit_mnist.runtime.cluster import trainer_plugins


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a `_target_` in a callbacks or logger group (None or empty gives [])."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_trainer(trainer_cfg: DictConfig, callbacks: list, loggers: list, **overrides: Any) -> L.Trainer:
    """The Lightning Trainer of `trainer_cfg`; a `UserError` that quotes Lightning when it rejects an option."""
    plugins = trainer_plugins()  # in a submitit SLURM job: Lightning's own requeue handler off
    if plugins and "plugins" not in trainer_cfg and "plugins" not in overrides:
        overrides["plugins"] = plugins
    try:
        return hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, **overrides)
    except (InstantiationException, MisconfigurationException) as e:
        cause = find_user_error(e) or e.__cause__ or e
        if isinstance(cause, UserError):
            raise cause from e
        said = str(cause).strip().rstrip(".")
        raise UserError(f"Lightning rejected the trainer config: {said}. Fix the trainer.* override "
                        "(see conf/trainer/ and Lightning's Trainer documentation).") from e
