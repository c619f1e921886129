"""The accuracy and speed recipe: EMA, test-time augmentation, torch.compile, and the experiment configs' budgets."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import compose_config
from vit_mnist.data import MNISTDataModule
from vit_mnist.errors import UserError
from vit_mnist.models.tta import SHIFTS, shift, tta_logits
from vit_mnist.models.vit import count_parameters
from vit_mnist.runtime.hardware import fastest_precision
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.training.fit import build, train
from vit_mnist.training.module import ViTClassifier


@pytest.mark.parametrize(("experiment", "arch", "parameters"),
                         [("fast", "vit", 74_395), ("fast995", "vit", 345_082), ("fast_cnn", "cnn", 72_666)])
def test_speed_recipes_run_a_few_steps(data_dir: Path, tmp_path: Path, experiment: str, arch: str,
                                       parameters: int) -> None:
    """The speed recipes (time to 99%, to 99.5%, and the CNN's time to 99%): each composes with its own network and
    trains (debug=fdr), in the precision that is fastest on this machine."""
    cfg = compose_config([f"paths.data_dir={data_dir}", f"experiment={experiment}", "debug=fdr", "data.val_size=100",
                          "data.download=false", "trainer.accelerator=cpu"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 1 and metrics["arch"] == arch and metrics["num_parameters"] == parameters
    assert cfg.model.input_norm == "tophat" and cfg.data.augment.min_resolution > 0 and cfg.tta
    assert cfg.trainer.precision == fastest_precision("cpu")


SPEED_RECIPES = ("fast", "fast995", "fast_cnn")
OTHER_RECIPES = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if p.stem not in SPEED_RECIPES)


@pytest.mark.parametrize("experiment", OTHER_RECIPES)
def test_every_other_recipe_runs_as_a_debug_run(data_dir: Path, tmp_path: Path, experiment: str) -> None:
    """`experiment=<any> debug=fdr` trains one batch, tests, and shrinks what follows the test (the robustness
    benchmark and its digit sets) to debug's few images: seconds, not the recipe's hours."""
    cfg = compose_config([f"paths.data_dir={data_dir}", f"experiment={experiment}", "debug=fdr", "data.val_size=100",
                          "data.download=false", "trainer.accelerator=cpu"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 1 and 0.0 <= metrics["test/acc"] <= 1.0
    if cfg.get("robustness"):
        assert metrics["robustness_images"] == cfg.robustness_images == 20
        assert {"test/mca", "test/other_writers", "test/pen_photos"} <= set(metrics)


@pytest.mark.parametrize("experiment", ["note_budget", "best", "fast", "fast995"])
def test_experiment_configs_compose_within_the_parameter_budget(data_dir: Path, tmp_path: Path, experiment: str) -> None:
    # Without TINY: the experiment's own model shape.
    cfg = compose_config([f"paths.data_dir={data_dir}", f"experiment={experiment}"], tmp_path)
    _, module = build(cfg)
    assert count_parameters(module.net) <= 1_000_000
    assert cfg.model.patch_size == 4
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.scheduler.name == "warmup_cosine"
    assert cfg.data.augment.hflip is False  # a mirrored digit is another digit
    assert (cfg.loss.label_smoothing > 0 and cfg.data.augment.rotation > 0) == (experiment != "fast")
    assert cfg.trainer.max_epochs == 10 if experiment == "note_budget" else cfg.trainer.max_epochs <= 100
    if not experiment.startswith("fast"):  # pure ViTs: the patch embedding is the only convolution
        convs = [name for name, m in module.net.named_modules() if isinstance(m, nn.Conv2d)]
        assert convs == ["patch_embed.proj"] and cfg.model.stem == "patch"


def test_shift_moves_pixels_and_fills_with_the_edge() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 3] = 1.0
    down = shift(x, 1, 0)
    assert down[0, 0, 3, 3] == 1.0 and down.sum() == 1.0
    left = shift(x, 0, -1)
    assert left[0, 0, 2, 2] == 1.0 and left.sum() == 1.0
    assert torch.equal(shift(x, 0, 0), x)


def test_tta_averages_the_logits_of_the_shifted_images() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 3))
    x = torch.randn(4, 1, 5, 5)
    expected = torch.stack([net(shift(x, dy, dx)) for dy, dx in SHIFTS]).mean(0)
    assert torch.allclose(tta_logits(net, x), expected, atol=1e-6)
    assert torch.allclose(tta_logits(net, x, shifts=((0, 0),)), net(x))


def test_ema_and_tta_are_what_the_test_measures(make_cfg, data_dir: Path) -> None:
    metrics = train(make_cfg("trainer.max_epochs=2", "callbacks=ema", "callbacks.ema.decay=0.9", "tta=true",
                             "logger=csv"))
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    # the checkpoint's state_dict holds the averaged weights, the raw ones are kept for resuming
    assert not torch.equal(ckpt["state_dict"]["net.head.weight"], ckpt["current_model_state"]["net.head.weight"])
    model = ViTClassifier.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu").eval()
    assert model.hparams.tta is True
    dm = MNISTDataModule(data_dir=str(data_dir), download=False)
    dm.setup("test")
    x, y = dm.transform(dm.test_set.images), dm.test_set.labels
    with torch.no_grad():
        loss = F.cross_entropy(tta_logits(model, x), y).item()
        raw = ViTClassifier(**ckpt["hyper_parameters"]).eval()
        raw.load_state_dict(ckpt["current_model_state"])
        raw_loss = F.cross_entropy(tta_logits(raw, x), y).item()
        plain_loss = F.cross_entropy(model(x), y).item()
    # the logged test loss is that of the averaged weights with TTA (Lightning alone would test the raw ones)
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-4)
    assert metrics["test/loss"] != pytest.approx(raw_loss, rel=1e-4)
    assert metrics["test/loss"] != pytest.approx(plain_loss, rel=1e-4)


def test_ema_start_fraction_follows_the_run_length(make_cfg) -> None:
    # 2 epochs of 10 steps: a start at 25% of the run is step index 5, and steps 5..19 are averaged
    cfg = make_cfg("callbacks=ema", "callbacks.ema.update_starting_at_fraction=0.25")
    datamodule, module = build(cfg)
    callback = hydra.utils.instantiate(cfg.callbacks.ema)
    assert callback.update_starting_at_step is None  # set once the fit knows its length
    trainer = L.Trainer(max_epochs=2, limit_train_batches=10, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback])
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 20 and callback.update_starting_at_step == 5
    assert callback._average_model.n_averaged.item() == 20 - 5


def test_compile_option_compiles_the_network_and_keeps_checkpoints_plain(make_cfg) -> None:
    # The eager backend: the same torch.compile path (Dynamo) as inductor, without minutes of C++ compiling.
    cfg = make_cfg("model.compile=eager", "trainer.max_epochs=1", "trainer.limit_train_batches=5", "logger=csv")
    _, module = build(cfg)
    traced = []
    module.net.head.register_forward_pre_hook(lambda *_: traced.append(torch.compiler.is_compiling()))
    module.net(torch.randn(2, 1, 28, 28))
    assert traced == [True]  # the forward ran under torch.compile
    metrics = train(cfg)
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert "net.head.weight" in state and not any("_orig_mod" in k for k in state)
    assert metrics["global_step"] == 5 and 0.0 <= metrics["test/acc"] <= 1.0
    assert ViTClassifier.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu").num_parameters > 0


def test_unknown_compile_backend_is_a_user_error(make_cfg) -> None:
    with pytest.raises(UserError, match="not a torch.compile backend or mode"):
        build(make_cfg("model.compile=warp_speed"))


@pytest.mark.parametrize(("setting", "expected"), [
    (True, ("inductor", None)), ("reduce-overhead", ("inductor", "reduce-overhead")),
    ("max-autotune", ("inductor", "max-autotune")), ("eager", ("eager", None)),
])
def test_compile_settings_reach_torch_compile(setting, expected, monkeypatch) -> None:
    """model.compile=reduce-overhead (CUDA graphs on a GPU) and inductor's other modes compile with inductor in that
    mode; a backend name compiles with that backend."""
    from vit_mnist.training.fit import compile_network

    seen = []
    net = torch.nn.Linear(2, 2)
    monkeypatch.setattr(net, "compile", lambda backend, mode=None: seen.append((backend, mode)))
    compile_network(net, setting)
    assert seen == [expected]
