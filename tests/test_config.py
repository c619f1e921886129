"""Every option of every config group composes, and bad configs fail before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from vit_mnist.errors import UserError
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.training.checks import validate

GROUPS = ["data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths", "experiment", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group: str, option: str) -> None:
    cfg = _compose([f"{group}={option}"])
    validate(cfg)
    assert cfg.model.image_size == 28 and cfg.data.name in ("mnist", "fashion_mnist")


def test_groups_exist() -> None:
    for group in GROUPS:
        assert any((CONFIG_DIR / group).glob("*.yaml")), group


def test_defaults_are_the_notes_model() -> None:
    cfg = _compose([])
    m = cfg.model
    assert (m.image_size, m.in_channels, m.num_classes, m.patch_size, m.hidden_dim, m.depth, m.heads, m.mlp_dim) == (
        28, 1, 10, 7, 128, 4, 4, 512
    )
    assert cfg.data.augment.hflip is False


@pytest.mark.parametrize("model", ["vit", "cnn"])
def test_background_normalisation_defaults_to_digits_only(model: str) -> None:
    """Handwritten digits get the top-hat and scan/blur variation by default; garments, which fill their image, not."""
    mnist = _compose([f"model={model}"])
    fashion = _compose([f"model={model}", "data=fashion_mnist"])
    assert mnist.model.input_norm == "tophat" and mnist.data.augment.min_resolution == 10
    assert fashion.model.input_norm == "none" and fashion.data.augment.min_resolution == 0
    assert fashion.data.augment.blur == 0.0 and _compose(["experiment=seed_note"]).model.input_norm == "none"


def test_seed_note_is_the_notes_recipe() -> None:
    cfg = _compose(["experiment=seed_note"])
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 3e-4
    assert cfg.data.batch_size == 64 and cfg.trainer.max_epochs == 10
    assert cfg.data.augment.hflip is True and cfg.data.augment.rotation > 0


def test_data_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIT_MNIST_DATA_DIR", str(tmp_path))
    assert _compose([]).paths.data_dir == str(tmp_path)
    monkeypatch.delenv("VIT_MNIST_DATA_DIR")
    assert _compose([]).paths.data_dir == str(CONFIG_DIR.parent / "data")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["model.patch_size=5"], ["model.patch_size=5", "model.image_size=28"]),
        (["model.hidden_dim=130", "model.heads=4"], ["model.hidden_dim=130", "model.heads=4"]),
        (["data.name=kmnist"], ["data.name='kmnist'"]),
        (["data.augment.interpolation=cubic"], ["data.augment.interpolation='cubic'", "nearest"]),
        (["data.augment.rotation=-5"], ["data.augment.rotation=-5", "[0, 180]"]),
        (["data.augment.translate=1.5"], ["data.augment.translate=1.5", "[0, 1)"]),
        (["data.augment.scale=[1.1,0.9]"], ["data.augment.scale=[1.1, 0.9]", "low <= high"]),
        (["data.augment.scale=[0,1]"], ["data.augment.scale=[0, 1]", "0 < low"]),
        (["data.batch_size=0"], ["data.batch_size=0", "must be positive"]),
        (["data.num_workers=-1"], ["data.num_workers=-1", "must not be negative"]),
        (["loss.label_smoothing=1.5"], ["loss.label_smoothing=1.5", "[0, 1)"]),
        (["scheduler=warmup_cosine", "scheduler.warmup_fraction=1"], ["scheduler.warmup_fraction=1", "[0, 1)"]),
        (["scheduler=warmup_cosine", "scheduler.min_lr_ratio=-0.5"], ["scheduler.min_lr_ratio=-0.5", "[0, 1]"]),
        (["seed=abc"], ["seed='abc'", "integer"]),
        (["data=fashion_mnist", "data.augment.styles=0.5"], ["data.augment.styles=0.5", "'Trouser'", "styles=0"]),
        (["callbacks=ema", "callbacks.ema.decay=1.5"], ["callbacks.ema.decay=1.5", "between 0 and 1"]),
        (["experiment=best", "callbacks.ema.update_starting_at_fraction=1.2"],
         ["update_starting_at_fraction=1.2", "[0, 1)"]),
        (["experiment=best", "callbacks.ema.update_starting_at_step=100"],
         ["update_starting_at_step", "update_starting_at_fraction", "keep one"]),
    ],
)
def test_validate_rejects_bad_configs(overrides: list[str], words: list[str]) -> None:
    with pytest.raises(UserError) as error:
        validate(_compose(overrides))
    for word in words:
        assert word in str(error.value)


def test_validate_accepts_a_good_config() -> None:
    validate(_compose(["model.depth=2"]))


def test_local_config_is_optional_and_read_last(tmp_path: Path) -> None:
    """conf/local/default.yaml (git-ignored) holds a machine's own settings; without it, configs compose as ever."""
    local = tmp_path / "local"
    local.mkdir()
    (local / "default.yaml").write_text("# @package _global_\npaths:\n  data_dir: /somewhere/else\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra.searchpath=[file://{tmp_path}]"])
    assert cfg.paths.data_dir == "/somewhere/else"
