"""A callback for DDP tests: each rank saves what the training augmentation draws for one fixed batch."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback


class RankProbe(Callback):
    """At the first training batch, push 8 copies of one fixed image through the datamodule's training
    transform (the code `on_after_batch_transfer` runs) and save the result as `rank_probe_<global rank>.pt`; with
    outlier exposure, also the batch's outliers and the pool as `rank_outliers_<global rank>.pt`.
    With `fail_on_rank`, that rank alone fails at its third batch (as one GPU running out of memory would)."""

    def __init__(self, out_dir: str, fail_on_rank: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.fail_on_rank = fail_on_rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 2 and trainer.global_rank == self.fail_on_rank:
            raise RuntimeError(f"rank probe: rank {self.fail_on_rank} fails alone")
        if batch_idx != 0 or trainer.current_epoch != 0:
            return
        image = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
        image[:, :, 6:22, 12:16] = 255  # an off-centre bar: any rotation, shift or zoom changes it
        image[:, :, 6:10, 12:20] = 255
        augmented = trainer.datamodule.transform(image.to(pl_module.device), train=True).cpu()
        torch.save(augmented, self.out_dir / f"rank_probe_{trainer.global_rank}.pt")
        if len(batch) > 2:  # outlier exposure: this rank's non-digits of the batch, and the pool they come from
            torch.save({"batch": batch[2].cpu(), "pool": trainer.datamodule.outliers.images},
                       self.out_dir / f"rank_outliers_{trainer.global_rank}.pt")
