"""In a search trial's job: report val/acc to the trial after each validation, stop training when the pruner says so."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch import Callback

log = logging.getLogger(__name__)

MONITOR = "val/acc"


class TrialReporter(Callback):
    """Reports `val/acc` to an Optuna trial after each validation (step n: the n-th validation, so the epoch with one
    validation per epoch) and sets `trainer.should_stop` when the study's pruner prunes the trial."""

    def __init__(self, trial: Any, monitor: str = MONITOR) -> None:
        self.trial = trial
        self.monitor = monitor
        self.step = 0
        self.pruned = False
        self.last_value: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        self.last_value = float(value)
        if math.isfinite(self.last_value):  # Optuna refuses NaN; a NaN run fails later anyway
            self.trial.report(self.last_value, step=self.step)
        self.step += 1
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True  # Lightning ends the fit after this epoch, its checkpoints written
            log.info("Trial %d pruned after validation %d (%s %.4f): training stops", self.trial.number, self.step,
                     self.monitor, self.last_value)

    def reason(self, epochs: int, max_epochs: int | None) -> str:
        """One line for metrics.json and the sweep summary."""
        of = f" of {max_epochs}" if max_epochs and max_epochs > 0 else ""
        value = f" ({self.monitor} {self.last_value:.4f})" if self.last_value is not None else ""
        pruner = type(getattr(self.trial.study, "pruner", None)).__name__
        return f"stopped by the pruner ({pruner}) after {epochs}{of} epochs{value}"


def trial_reporter(world_size: int) -> TrialReporter | None:
    """The reporter of the trial this job runs (the Optuna sweeper tells it in `hydra.sweeper.trial`), else None.

    Not under DDP: the other ranks re-run the job without the sweeper's config, so they could not learn that the
    pruner stopped rank 0 (docs/scaling.md#pruning)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().get("sweeper")
    if not sweeper or not sweeper.get("trial"):
        return None
    if world_size > 1:
        log.warning("This trial trains on %d processes (DDP): it is not reported to the study and never pruned",
                    world_size)
        return None
    from vit_mnist.sweeps.study import open_trial

    trial = open_trial(sweeper)
    return TrialReporter(trial) if trial is not None else None
