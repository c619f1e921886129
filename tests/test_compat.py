"""Checkpoints and run configs written by earlier versions (the flat `vit_mnist/*.py` layout) keep working."""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any

import hydra
import lightning
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_config
from vit_mnist import load_model
from vit_mnist.evaluation.evaluate import evaluate
from vit_mnist.inference import Predictor
from vit_mnist.models.tta import tta_logits
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.training.checkpoints import load_module, read_checkpoint
from vit_mnist.training.fit import train
from vit_mnist.training.module import ViTClassifier

# The model configs of two checkpoints that the flat layout wrote (runs robust_p05 and robust_cnn), made tiny.
OLD_MODELS = {
    "vit": {"arch": "vit", "image_size": 28, "in_channels": 1, "num_classes": 10, "patch_size": 7, "hidden_dim": 32,
            "depth": 1, "heads": 2, "mlp_dim": 64, "dropout": 0.0, "pool": "cls", "pos_init": "sincos",
            "drop_path": 0.0, "input_norm": "tophat", "stem": "patch", "compile": False, "init_from": None},
    "cnn": {"arch": "cnn", "image_size": 28, "in_channels": 1, "num_classes": 10, "widths": [8, 16],
            "convs_per_block": 2, "dropout": 0.1, "input_norm": "tophat", "compile": False, "init_from": None},
}
# What those runs' .hydra/config.yaml held for the classes of this project (the rest of the file names
# Lightning's and torch's own classes).
OLD_RUN_CONFIG = """
data:
  _target_: vit_mnist.data.MNISTDataModule
  name: mnist
  data_dir: {data_dir}
  image_size: 28
  in_channels: 1
  num_classes: 10
  batch_size: 64
  eval_batch_size: 1000
  val_size: 100
  split_seed: 12345
  num_workers: 0
  download: false
  augment:
    rotation: 15.0
    elastic: 16.0
    handwriting_p: 0.5
callbacks:
  ema:
    _target_: vit_mnist.ema.EMA
    decay: 0.999
    update_starting_at_step: null
    update_starting_at_fraction: 0.05
    update_every_n_steps: 1
"""


def pickled_globals(path: Path) -> set[str]:
    """The `module.name` of every class or function a `torch.save` file refers to (what unpickling imports)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(arg))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
    return found


def old_layout_checkpoint(path: Path, arch: str) -> tuple[Path, ViTClassifier]:
    """A checkpoint with every entry that Lightning wrote for a `callbacks=ema` run of the flat layout (EMA state,
    optimizer and scheduler state, loops, the datamodule's hyperparameters), of a tiny untrained `arch`."""
    torch.manual_seed(0)
    module = ViTClassifier(
        model=dict(OLD_MODELS[arch]),
        optimizer={"_target_": "torch.optim.AdamW", "lr": 0.002, "weight_decay": 0.0005, "betas": [0.9, 0.999]},
        scheduler={"name": "warmup_cosine", "warmup_fraction": 0.05, "min_lr_ratio": 0.01}, label_smoothing=0.1,
        class_names=[str(i) for i in range(10)], normalize={"mean": 0.1307, "std": 0.3081}, dataset="mnist",
        tta=True,
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.002)
    module.net(torch.randn(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    best = "/work/runs/old/checkpoints/best.ckpt"
    checkpoint = {
        "epoch": 1,
        "global_step": 1718,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "loops": {name: {} for name in ("fit_loop", "validate_loop", "test_loop", "predict_loop")},
        "callbacks": {
            "EMA": {"latest_update_step": 1718},
            "ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
            "'train_time_interval': None}": {
                "monitor": "val/acc", "best_model_score": torch.tensor(0.98), "best_model_path": best,
                "current_score": torch.tensor(0.98), "dirpath": str(Path(best).parent),
                "best_k_models": {best: torch.tensor(0.98)}, "kth_best_model_path": best,
                "kth_value": torch.tensor(0.98), "last_model_path": best.replace("best", "last"),
            },
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [{"base_lrs": [0.002], "last_epoch": 1718, "_step_count": 1719, "_is_initial": False,
                           "_get_lr_called_within_step": False, "_last_lr": [0.00188], "lr_lambdas": [None]}],
        "hparams_name": None,
        "hyper_parameters": dict(module.hparams),
        "datamodule_hparams_name": "kwargs",
        "datamodule_hyper_parameters": {"name": "mnist", "data_dir": "/work/shared/data", "batch_size": 64,
                                        "eval_batch_size": 1000, "val_size": 5000, "split_seed": 12345,
                                        "num_workers": 0, "download": True, "augment": {"rotation": 15.0},
                                        "image_size": 28, "in_channels": 1, "num_classes": 10},
        "current_model_state": state,
        "averaging_state": {"n_averaged": torch.tensor(1718)},
    }
    torch.save(checkpoint, path)
    return path, module.eval()


@pytest.mark.parametrize("arch", ["vit", "cnn"])
def test_old_layout_checkpoint_loads_and_predicts(arch: str, tmp_path: Path) -> None:
    path, written = old_layout_checkpoint(tmp_path / "best.ckpt", arch)
    # like the real ones: nothing in the file names a module of this project, so moving one cannot break it
    assert not [g for g in pickled_globals(path) if g.startswith("vit_mnist")]
    assert read_checkpoint(path)["hyper_parameters"]["model"]["arch"] == arch  # weights_only=True
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        # the run had tta: true, so predictions average the shifted views as its test did; no temperature: T = 1
        expected = tta_logits(written.net, images).softmax(dim=-1).double().numpy()
    module = load_module(path)
    assert module.arch == arch
    assert all(torch.equal(v, written.state_dict()[k]) for k, v in module.state_dict().items())
    np.testing.assert_allclose(Predictor.from_checkpoint(path).probabilities(images.numpy()), expected, atol=1e-6)
    pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
    assert load_model(path).predict(pixels).probabilities.shape == (4, 10)
    assert isinstance(ViTClassifier.load_from_checkpoint(path, map_location="cpu"), ViTClassifier)


def test_old_layout_checkpoint_evaluates(data_dir: Path, tmp_path: Path) -> None:
    path, _ = old_layout_checkpoint(tmp_path / "best.ckpt", "cnn")
    cfg = compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={path}", "data.eval_batch_size=100",
                          "data.download=false", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                          "trainer.enable_model_summary=false"], tmp_path / "eval", "evaluate")
    metrics = evaluate(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and (tmp_path / "eval" / "metrics.json").is_file()


def test_training_checkpoints_name_no_module_of_this_project(data_dir: Path, tmp_path: Path) -> None:
    """Checkpoints are data (loaded with weights_only=True): a class of ours pickled into one would tie every
    saved checkpoint to where that class lives."""
    cfg = compose_config(TINY + [f"paths.data_dir={data_dir}", "callbacks=ema", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false"],
                         tmp_path)
    metrics = train(cfg)
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = Path(metrics["best_checkpoint"]).parent / name
        ours = [g for g in pickled_globals(ckpt) if g.startswith("vit_mnist")]
        assert not ours, f"{name} pickles {ours}"
        read_checkpoint(ckpt)


def _targets(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def test_old_run_config_targets_still_instantiate(data_dir: Path) -> None:
    """Old run folders' .hydra/config.yaml name `vit_mnist.data.MNISTDataModule` and `vit_mnist.ema.EMA`."""
    old = OmegaConf.create(OLD_RUN_CONFIG.format(data_dir=data_dir))
    datamodule = hydra.utils.instantiate(old.data)
    assert isinstance(datamodule, lightning.LightningDataModule) and datamodule.hparams.name == "mnist"
    ema = hydra.utils.instantiate(old.callbacks.ema)
    assert isinstance(ema, lightning.Callback) and ema.update_starting_at_fraction == 0.05


def test_every_target_in_the_configs_resolves() -> None:
    targets = set()
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        targets.update(_targets(OmegaConf.to_container(OmegaConf.load(path))))
    ours = sorted(t for t in targets if t.startswith("vit_mnist."))
    assert "vit_mnist.data.MNISTDataModule" in ours
    for target in ours:
        assert callable(hydra.utils.get_object(target)), target
