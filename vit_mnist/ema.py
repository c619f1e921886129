"""Exponential moving average of the weights: Lightning's `EMAWeightAveraging`, made safe to test after fitting."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    """EMA of the weights, used for validation, saved as the checkpoint's `state_dict` and kept after training.

    Checkpoints hold the averaged weights in `state_dict` (what `load_from_checkpoint`, evaluation and
    `model.init_from` read) and the raw weights in `current_model_state` (what resuming a fit restores).
    Lightning's callback also restores the raw weights when `trainer.test(ckpt_path=...)` follows `fit` on the
    same trainer, which would test the raw instead of the averaged weights; outside fitting this one keeps the
    averaged weights that the checkpoint's `state_dict` already loaded.
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
