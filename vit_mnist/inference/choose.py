"""Which checkpoint `serve` answers with when none is named: the newest one under outputs/ that gives verdicts."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vit_mnist.errors import UserError
from vit_mnist.ood.detector import CHECKPOINT_KEY

log = logging.getLogger(__name__)


def has_detector(path: Path) -> bool:
    """Whether the checkpoint holds an out-of-domain detector (memory-mapped: its weights are not read)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(CHECKPOINT_KEY) is not None
    except Exception:  # an unreadable or foreign file is no candidate; serve reports it if it is chosen by name
        return False


def newest_checkpoint(outputs: Path) -> tuple[Path, str]:
    """The newest `best.ckpt` under `outputs` that has a detector (predict's verdicts, out_of_domain included), else
    the newest at all, with a sentence saying which; a `UserError` when there is none."""
    found = sorted(outputs.glob("**/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise UserError(f"No checkpoint to serve: {outputs} holds no run's checkpoints/best.ckpt. Train one "
                        "(`python -m vit_mnist.train experiment=fast`), or name one: ckpt_path=path/to/best.ckpt.")
    for path in found:
        if has_detector(path):
            return path, "the newest checkpoint under outputs/ with an out-of-domain detector"
    log.warning("No checkpoint under %s has an out-of-domain detector, so nothing will be called out_of_domain: "
                "`python -m vit_mnist.calibrate ckpt_path=%s` fits one.", outputs, found[0])
    return found[0], "the newest checkpoint under outputs/ (none has an out-of-domain detector)"
