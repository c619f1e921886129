"""The tiny trained checkpoint shared by the deployment tests (predict, export, serve, the API, the browser, calibration
and verdicts) and the evaluation tests, trained once a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import trained_run

# a 2-epoch ViT on the synthetic MNIST, tested, logged to CSV (no TensorBoard files to write)
TINY_RUN = ("trainer.max_epochs=2", "logger=csv")


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """best.ckpt of the shared 2-epoch run (`TINY_RUN`)."""
    return Path(trained_run(tmp_path_factory, data_dir, *TINY_RUN)[1]["best_checkpoint"])
