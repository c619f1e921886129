"""Callbacks for the cluster tests: a job that dies without a Python exception (as one killed from outside)."""

from __future__ import annotations

import os

from lightning.pytorch import Callback


class ExitAt(Callback):
    """At the first training batch, global rank `rank` ends its process with `os._exit(exit_code)` (0: nothing),
    as the out-of-memory killer or SLURM's time limit would: no exception, no result, no metrics.json."""

    def __init__(self, exit_code: int = 0, rank: int = 0) -> None:
        self.exit_code = exit_code
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.exit_code and trainer.global_rank == self.rank:
            os._exit(self.exit_code)
