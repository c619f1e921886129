"""The crop warmup: the first share of the steps trains on the centre; the rest and evaluation on whole images."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import CNN_TINY, compose_config
from vit_mnist.errors import UserError
from vit_mnist.training.checks import validate
from vit_mnist.training.fit import build

CCT = ("model.patch_size=4", "model.stem=cct", "model.pool=seq", "model.ffn=leff")
OE = ("outlier_exposure.weight=0.5", "outlier_exposure.count=40", "outlier_exposure.batch_size=8")


class BatchSides(L.Callback):
    """The side of every batch the network trains and validates on, digits and non-digits, after the data's hooks."""

    def __init__(self) -> None:
        self.train: list[tuple[int, ...]] = []
        self.val: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        self.train.append(tuple(int(x.shape[-1]) for x in (batch[0], *batch[2:])))

    def on_validation_batch_start(self, trainer, module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.val.append(int(batch[0].shape[-1]))


def test_the_first_half_of_the_steps_trains_on_the_centre_then_on_whole_images(make_cfg) -> None:
    cfg = make_cfg(*CCT, *OE, "data.crop_warmup.size=20", "data.crop_warmup.fraction=0.5")
    validate(cfg)
    datamodule, module = build(cfg)
    sides = BatchSides()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[sides], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=datamodule)
    # 6 optimizer steps: the first 3 on the central 20x20 pixels (the non-digits too), then whole 28x28 images;
    # validation reads whole images throughout
    assert sides.train == [(20, 20)] * 3 + [(28, 28)] * 3
    assert sides.val == [28, 28]
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_without_the_warmup_every_step_trains_on_whole_images(make_cfg) -> None:
    datamodule, module = build(make_cfg(*CCT))
    sides = BatchSides()
    L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[sides], logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu").fit(module, datamodule=datamodule)
    assert sides.train == [(28,)] * 2


@pytest.mark.parametrize(("overrides", "message"), [
    ((*CCT, "data.crop_warmup.size=24"), r"data.crop_warmup.size=24 cannot cut 28x28 images .* divisible by 8"),
    (("data.crop_warmup.size=21",), r"data.crop_warmup.size=21 .* 7-pixel tokens .* divisible by 14; e.g. 14\)"),
    (("data.crop_warmup.size=28",), r"data.crop_warmup.size=28 .* smaller than the image"),
    (("data.crop_warmup.size=half",), r"data.crop_warmup.size='half' .* a whole number of pixels"),
    ((*CCT, "data.crop_warmup.size=20", "data.crop_warmup.fraction=most"), r"data.crop_warmup.fraction=most must"),
    ((*CCT, "data.crop_warmup.size=20", "data.crop_warmup.fraction=0"),
     r"data.crop_warmup.fraction=0 must lie in \(0, 1\]"),
    ((*CCT, "+data.crop_warmup.side=20"),
     r"data.crop_warmup takes `size` and `fraction`; it was given \['fraction'"),
])
def test_a_crop_the_network_cannot_read_is_refused_naming_the_key(make_cfg, overrides: tuple, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate(make_cfg(*overrides))


def test_a_cnn_takes_any_centred_crop(data_dir: Path, tmp_path: Path) -> None:
    validate(compose_config(CNN_TINY + [f"paths.data_dir={data_dir}", "data.crop_warmup.size=24"], tmp_path))
    with pytest.raises(UserError, match="data.crop_warmup.size=23"):  # an odd margin has no centre
        validate(compose_config(CNN_TINY + [f"paths.data_dir={data_dir}", "data.crop_warmup.size=23"], tmp_path))
