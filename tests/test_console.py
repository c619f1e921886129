"""The training console: NetworkSummary shows the network alone; quiet_known_noise drops only the known noise."""

from __future__ import annotations

import logging
import re
import warnings
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary
from rich import get_console

from vit_mnist.runtime import console as runtime_console
from vit_mnist.runtime.console import NetworkSummary, quiet_known_noise
from vit_mnist.training.module import ViTClassifier


@pytest.fixture
def quiet():
    """quiet_known_noise for one test: its logging filter is taken off again afterwards."""
    yield quiet_known_noise
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).removeFilter(runtime_console._DROP_NOISY_INFO)


def tiny_module() -> ViTClassifier:
    return ViTClassifier(model={"arch": "vit", "hidden_dim": 32, "depth": 2, "heads": 2, "mlp_dim": 64})


def test_network_summary_shows_the_net_only():
    module = tiny_module()
    with get_console().capture() as captured:
        NetworkSummary(max_depth=2).on_fit_start(SimpleNamespace(is_global_zero=True), module)
    out = captured.get()

    assert "VisionTransformer" in out
    assert re.search(r"blocks\.0\s*│\s*Block\b", out) and re.search(r"blocks\.1\s*│\s*Block\b", out), out
    assert "blocks.0.attn" not in out  # max_depth=2 counts from the network: its blocks, not their layers
    assert "cls_token, pos_embed" in out  # the ViT's own parameters have a row, so the rows add up
    total = int(re.search(r"Total params: ([\d,]+)", out).group(1).replace(",", ""))
    assert total == sum(p.numel() for p in module.net.parameters())
    for noise in ("train_loss", "val_acc", "val_f1", "test_metrics", "test_ece", "MeanMetric", "FLOPs"):
        assert noise not in out


def test_network_summary_replaces_lightnings_default():
    trainer = Trainer(callbacks=[NetworkSummary()], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, accelerator="cpu")
    assert [type(c) for c in trainer.callbacks if isinstance(c, ModelSummary)] == [NetworkSummary]


def _lightning_flattens_a_tensor() -> None:
    # Lightning 2.6 builds torch's deprecated LeafSpec here on every logged batch (the run's FutureWarning)
    from lightning.pytorch.utilities._pytree import _tree_flatten

    _tree_flatten(torch.zeros(1))


def test_quiet_known_noise_filters_named_warnings_only(quiet):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _lightning_flattens_a_tensor()
        assert any("LeafSpec" in str(w.message) for w in caught), "the noise this filter is for no longer occurs"
        caught.clear()

        quiet()
        quiet()  # idempotent
        _lightning_flattens_a_tensor()
        warnings.warn("The number of training batches (5) is smaller than the logging interval "
                      "Trainer(log_every_n_steps=50).", PossibleUserWarning)
        warnings.warn("The 'train_dataloader' does not have many workers which may be a bottleneck.",
                      PossibleUserWarning)
        warnings.warn("an unrelated problem", UserWarning)
        warnings.warn("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.",
                      PossibleUserWarning)  # a real Lightning warning of the same category still shows
    assert [str(w.message) for w in caught] == [
        "an unrelated problem", "GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`."]


def test_quiet_known_noise_drops_lightnings_tips(quiet):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(handler)
    try:
        quiet()
        Trainer(callbacks=[NetworkSummary()], logger=False, enable_checkpointing=False, accelerator="cpu")
    finally:
        lightning_log.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert any(m.startswith("GPU available:") for m in messages), messages  # device info is kept
    assert not [m for m in messages if "Tip:" in m or "already configured with model summary" in m], messages
