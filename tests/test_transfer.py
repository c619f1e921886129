"""Transfer learning with `model.init_from`: weights carried over, head re-initialised, grids resized, clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY
from vit_mnist.errors import UserError
from vit_mnist.training.fit import build, train
from vit_mnist.training.module import ViTClassifier
from vit_mnist.training.transfer import interpolate_pos_embed, resize_patch_kernel

pytestmark = pytest.mark.xdist_group("transfer")

ROOT = Path(__file__).resolve().parents[1]
# TINY's network shape, as the checkpoints below are built.
SHAPE = {"image_size": 28, "in_channels": 1, "num_classes": 10, "patch_size": 7, "hidden_dim": 32, "depth": 2,
         "heads": 2, "mlp_dim": 64}


def save_source(path: Path, **changes) -> dict[str, torch.Tensor]:
    """Write a checkpoint as training does (hyper_parameters + state_dict) and return its network weights."""
    torch.manual_seed(123)
    module = ViTClassifier(model={**SHAPE, **changes})
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return module.net.state_dict()


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real training run on the synthetic Fashion-MNIST (the source of the transfer)."""
    from tests.conftest import compose_config

    out = tmp_path_factory.mktemp("source")
    return train(compose_config(TINY + [f"paths.data_dir={data_dir}", "data=fashion_mnist", "trainer.max_epochs=1",
                                        "test=false", "logger=csv"], out))


def test_fine_tuning_starts_from_the_source_weights(trained: dict, make_cfg, tmp_path: Path, caplog) -> None:
    source = torch.load(trained["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    with caplog.at_level(logging.INFO, logger="vit_mnist.training.transfer"):
        _, module = build(make_cfg(f"model.init_from={trained['best_checkpoint']}"))
    for name, value in module.net.state_dict().items():
        assert torch.equal(value, source[f"net.{name}"]), name
    n = len(module.net.state_dict())
    assert f"loaded {n} of {n} tensors (all of them unchanged)" in caplog.text
    # The synthetic datasets share their class patterns, so what was learnt on one carries over to the other:
    # after the same 3 steps, fine-tuning is far ahead of training from scratch.
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "test=false", "logger=csv"]
    tuned = train(make_cfg(f"model.init_from={trained['best_checkpoint']}", *short, output_dir=tmp_path / "tuned"))
    scratch = train(make_cfg(*short, output_dir=tmp_path / "scratch"))
    assert tuned["val/acc_best"] > scratch["val/acc_best"] + 0.2


def test_head_is_reinitialised_when_the_class_count_differs(make_cfg, tmp_path: Path) -> None:
    source = save_source(tmp_path / "five.ckpt", num_classes=5)
    torch.manual_seed(0)
    _, fresh = build(make_cfg())
    torch.manual_seed(0)
    _, module = build(make_cfg(f"model.init_from={tmp_path / 'five.ckpt'}"))
    state = module.net.state_dict()
    assert state["head.weight"].shape == (10, 32)
    # the head keeps its fresh initialisation; every other tensor is the source's
    assert torch.equal(state["head.weight"], fresh.net.state_dict()["head.weight"])
    for name, value in source.items():
        if not name.startswith("head."):
            assert torch.equal(state[name], value), name


def test_position_embeddings_interpolated_when_the_patch_size_differs(make_cfg, tmp_path: Path, caplog) -> None:
    source = save_source(tmp_path / "p7.ckpt")  # 4x4 grid of 7x7 patches
    with caplog.at_level(logging.INFO, logger="vit_mnist.training.transfer"):
        _, module = build(make_cfg("model.patch_size=4", f"model.init_from={tmp_path / 'p7.ckpt'}"))
    state = module.net.state_dict()
    assert state["pos_embed"].shape == (1, 50, 32)  # CLS + 7x7
    assert torch.equal(state["pos_embed"][:, 0], source["pos_embed"][:, 0])  # CLS kept
    assert state["patch_embed.proj.weight"].shape == (32, 1, 4, 4)
    assert torch.equal(state["blocks.1.mlp.fc2.weight"], source["blocks.1.mlp.fc2.weight"])
    assert "pos_embed interpolated from 16 to 49 patches" in caplog.text
    assert "patch kernel resized from 7x7 to 4x4" in caplog.text


def test_interpolation_keeps_smooth_grids() -> None:
    torch.manual_seed(0)
    pos = torch.randn(1, 17, 8)
    assert torch.allclose(interpolate_pos_embed(pos, 17), pos, atol=1e-6)  # same grid: unchanged
    # a grid that is constant per channel stays constant at any size
    flat = torch.cat([torch.randn(1, 1, 8), torch.ones(1, 16, 8) * torch.arange(8.0)], dim=1)
    out = interpolate_pos_embed(flat, 50)
    assert torch.allclose(out[:, 1:], torch.arange(8.0).expand(1, 49, 8), atol=1e-5)
    # a grid ramping left to right still ramps left to right
    ramp = torch.arange(4.0).repeat(4).view(1, 16, 1)
    row = interpolate_pos_embed(torch.cat([torch.zeros(1, 1, 1), ramp], dim=1), 50)[0, 1:8, 0]
    assert bool((row[1:] > row[:-1]).all())


def test_resized_kernel_gives_resized_patches_the_same_token() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 1, 4, 4)
    bigger = resize_patch_kernel(weight, 7)
    patches = torch.randn(10, 1, 4, 4)
    resized = F.interpolate(patches, size=(7, 7), mode="bilinear", align_corners=False)
    tokens = torch.einsum("nchw,dchw->nd", patches, weight)
    assert torch.allclose(torch.einsum("nchw,dchw->nd", resized, bigger), tokens, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "named"),
    [({"hidden_dim": 64, "heads": 2}, "model.hidden_dim=64"), ({"depth": 3}, "model.depth=3")],
)
def test_incompatible_checkpoint_is_a_clear_error(make_cfg, tmp_path: Path, change: dict, named: str) -> None:
    save_source(tmp_path / "other.ckpt", **change)
    with pytest.raises(UserError, match="cannot initialise this model") as info:
        build(make_cfg(f"model.init_from={tmp_path / 'other.ckpt'}"))
    assert named in str(info.value) and "model.init_from=null" in str(info.value)


def test_bad_init_from_path_stops_the_cli_before_any_run_folder(data_dir: Path, tmp_path: Path,
                                                                run_in_process) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    run_dir = tmp_path / "run"
    result = run_in_process("vit_mnist.train", *TINY, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
                            f"model.init_from={junk}", cwd=tmp_path)
    assert result.returncode == 2
    assert "is not a readable vit-mnist checkpoint" in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr
    assert not run_dir.exists()
