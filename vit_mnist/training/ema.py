"""Exponential moving average of the weights: Lightning's `EMAWeightAveraging`, made safe to test after fitting."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from vit_mnist.errors import UserError


def check_ema_options(decay: float, update_starting_at_step: int | None = None,
                      update_starting_at_fraction: float | None = None) -> None:
    """`UserError` for a decay outside (0, 1), a start fraction outside [0, 1), or two ways of saying when to start."""
    if not 0.0 < float(decay) < 1.0:
        raise UserError(f"callbacks.ema.decay={decay} must lie strictly between 0 and 1: the average spans about "
                        "1 / (1 - decay) steps, e.g. decay=0.999 for about 1000 steps.")
    if update_starting_at_fraction is not None:
        if not 0.0 <= float(update_starting_at_fraction) < 1.0:
            raise UserError(f"callbacks.ema.update_starting_at_fraction={update_starting_at_fraction} must be in "
                            "[0, 1): the fraction of the run's optimizer steps after which the average starts, "
                            "e.g. 0.05 to start once a 5% warmup is over.")
        if update_starting_at_step is not None:
            raise UserError("callbacks.ema sets both update_starting_at_step and update_starting_at_fraction: keep "
                            "one (e.g. callbacks.ema.update_starting_at_step=null).")


class EMA(EMAWeightAveraging):
    """EMA of the weights, used for validation, saved as the checkpoint's `state_dict` and kept after training.

    Checkpoints hold the averaged weights in `state_dict` (what `load_from_checkpoint`, evaluation and
    `model.init_from` read) and the raw weights in `current_model_state` (what resuming a fit restores).
    Lightning's callback also restores the raw weights when `trainer.test(ckpt_path=...)` follows `fit` on the
    same trainer, which would test the raw instead of the averaged weights; outside fitting this one keeps the
    averaged weights that the checkpoint's `state_dict` already loaded.

    `update_starting_at_fraction` starts the average after that fraction of the run's optimizer steps, so that
    it follows the warmup when `trainer.max_epochs` changes (a fixed `update_starting_at_step` would not).
    """

    def __init__(self, decay: float = 0.999, update_starting_at_step: int | None = None,
                 update_starting_at_fraction: float | None = None, **kwargs: Any) -> None:
        check_ema_options(decay, update_starting_at_step, update_starting_at_fraction)
        super().__init__(decay=decay, update_starting_at_step=update_starting_at_step, **kwargs)
        self.update_starting_at_fraction = update_starting_at_fraction

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.update_starting_at_fraction is not None:
            total = int(trainer.estimated_stepping_batches)
            self.update_starting_at_step = int(self.update_starting_at_fraction * total)
        super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
