"""A tiny trained checkpoint shared by the deployment tests (predict, export, serve, browser), once a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY, compose_config
from vit_mnist.training.fit import train


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """best.ckpt of a 2-epoch run on the synthetic MNIST; later calls in the session reuse the file."""
    out = tmp_path_factory.getbasetemp() / "deploy_tiny_run"
    ckpt = out / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        # compose_config is what the make_cfg fixture uses; make_cfg itself is per test, this is per session.
        overrides = [f"paths.data_dir={data_dir}", "trainer.max_epochs=2", "logger=csv", "test=false"]
        cfg = compose_config(TINY + overrides, out)
        train(cfg)
    return ckpt
