"""End-to-end training on synthetic IDX data: learning, artifacts, TensorBoard, reload, resume, seeds, CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import TINY, compose_config, run_module
from vit_mnist.data import MNISTDataModule
from vit_mnist.data.sources import get_spec
from vit_mnist.errors import UserError
from vit_mnist.models.outputs import run_network
from vit_mnist.training.distributed import check_accelerator
from vit_mnist.training.fit import train
from vit_mnist.training.module import ViTClassifier

pytestmark = pytest.mark.xdist_group("train")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config(TINY + [f"paths.data_dir={data_dir}", "trainer.max_epochs=4"], out)
    return out, train(cfg)


def test_training_learns_far_above_chance(trained: tuple[Path, dict]) -> None:
    _, metrics = trained
    assert metrics["test/acc"] > 0.6 and metrics["val/acc_best"] > 0.6  # chance is 0.1
    assert metrics["epochs"] == 4


def test_run_folder_artifacts(trained: tuple[Path, dict]) -> None:
    out, metrics = trained
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    for key in ("test/loss", "test/f1_macro", "val/acc_best", "num_parameters", "epochs", "wall_time_s", "best_checkpoint",
                "calibration/temperature", "test/ece", "test/ece_raw", "test/nll", "test/nll_raw"):
        assert key in saved, key
    assert Path(saved["best_checkpoint"]).is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    rows = (out / "confusion_matrix.csv").read_text().strip().splitlines()
    assert len(rows) == 11
    counts = [[int(v) for v in row.split(",")[1:]] for row in rows[1:]]
    assert sum(map(sum, counts)) == 200  # every synthetic test image counted once
    assert sum(counts[i][i] for i in range(10)) / 200 == pytest.approx(saved["test/acc"])
    assert (out / "confusion_matrix.png").stat().st_size > 1000


def test_tensorboard_has_scalars_hparams_and_confusion_image(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/f1_macro"):
        assert tag in scalars, tag
    assert len(events.Scalars("val/acc")) == 4
    assert "test/confusion_matrix" in events.Tags()["images"]
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins and "_hparams_/experiment" in plugins


def test_checkpoint_reload_gives_identical_logits(trained: tuple[Path, dict], data_dir: Path) -> None:
    out, metrics = trained
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    model = ViTClassifier.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu").eval()
    again = ViTClassifier(**ckpt["hyper_parameters"]).eval()
    again.load_state_dict(ckpt["state_dict"])
    dm = MNISTDataModule(data_dir=str(data_dir), download=False)
    dm.setup("test")
    x = dm.transform(dm.test_set.images[:50])
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
        accuracy = (model(dm.transform(dm.test_set.images)).argmax(1) == dm.test_set.labels).float().mean()
    assert accuracy.item() == pytest.approx(metrics["test/acc"])
    assert model.hparams.class_names == [str(i) for i in range(10)] and model.hparams.normalize["std"] == 0.3081


def test_resume_from_last_checkpoint_continues(trained: tuple[Path, dict], data_dir: Path, tmp_path: Path) -> None:
    out, first = trained
    last = out / "checkpoints" / "last.ckpt"
    cfg = compose_config(TINY + [f"paths.data_dir={data_dir}", "trainer.max_epochs=6", f"ckpt_path={last}"], tmp_path)
    resumed = train(cfg)
    assert resumed["epochs"] == 6
    assert resumed["global_step"] == first["global_step"] * 6 // 4
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    per_epoch = first["global_step"] // 4
    steps = [event.step for event in events.Scalars("val/acc")]
    # Epochs 5 and 6 ran; Lightning may first re-validate the restored epoch-4 weights.
    assert steps[-2:] == [5 * per_epoch - 1, 6 * per_epoch - 1]
    assert min(steps) >= 4 * per_epoch - 1


def test_last_checkpoint_holds_the_final_epoch_even_without_improvement(data_dir: Path, tmp_path: Path) -> None:
    """Weights that barely move never beat the first epoch's val/acc: last.ckpt must still be the newest epoch."""
    cfg = compose_config(TINY + [f"paths.data_dir={data_dir}", "trainer.max_epochs=3", "optimizer.lr=1e-12",
                                 "test=false", "logger=csv"], tmp_path)
    metrics = train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["epoch"] == 0  # val/acc never improved after the first epoch
    assert last["epoch"] == 2 and last["global_step"] == metrics["global_step"]


def test_same_seed_same_validation_metrics(data_dir: Path, tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        cfg = compose_config(TINY + [f"paths.data_dir={data_dir}", "trainer.max_epochs=1", f"seed={seed}",
                                     "logger=csv", "test=false"], tmp_path / name)
        train(cfg)
        runs.append((tmp_path / name / "csv" / "metrics.csv").read_text())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def _cli(args: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return run_module("vit_mnist.train", *args, cwd=cwd, **(env_extra or {}))


def test_cli_trainer_options_lightning_rejects_are_one_paragraph(data_dir: Path, tmp_path: Path,
                                                                 run_in_process) -> None:
    # found only once Lightning builds the Trainer, after Hydra made the run folder: the folder goes again
    run_dir = tmp_path / "run"
    result = run_in_process("vit_mnist.train", "trainer.precision=fp8", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                            VIT_MNIST_DATA_DIR=str(data_dir))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "error: Lightning rejected the trainer config" in result.stderr
    assert "'fp8' is invalid" in result.stderr.replace("\n", " ") and not run_dir.exists()


def test_cli_fast_dev_run_on_fashion(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "fdr"
    result = _cli(["debug=fdr", "data=fashion_mnist", "data.val_size=100", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                  env_extra={"VIT_MNIST_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["global_step"] == 1
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["model.patch_size=5"], ["model.patch_size=5", "does not divide", "model.image_size=28"]),
        (["model.hidden_dim=130", "model.heads=4"], ["model.hidden_dim=130", "model.heads=4"]),
        (["data.download=false"], ["MNIST/raw", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "VIT_MNIST_DATA_DIR"]),
    ],
)
def test_cli_user_errors_are_one_paragraph(args: list[str], words: list[str], tmp_path: Path, run_in_process) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run_dir = tmp_path / "run"
    result = run_in_process("vit_mnist.train", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path,
                            VIT_MNIST_DATA_DIR=str(empty))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    for word in words:
        assert word in result.stderr.replace("\n", " ")
    assert not run_dir.exists()  # nothing written half-way


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("vit_mnist.train", []),  # refused before Hydra makes a folder
        ("vit_mnist.train", ["--config-dir=CWD"]),  # a flag skips that check: refused in the job, its folders go
        ("vit_mnist.evaluate", ["ckpt_path=missing.ckpt"]),
    ],
)
def test_cli_gpu_without_a_usable_gpu_says_why_and_leaves_nothing(module: str, args: list[str], data_dir: Path,
                                                                  tmp_path: Path, run_in_process) -> None:
    log_dir = tmp_path / "outputs"
    args = [a.replace("CWD", str(tmp_path)) for a in args]
    result = run_in_process(module, *args, "trainer.accelerator=gpu", f"paths.log_dir={log_dir}", cwd=tmp_path,
                            VIT_MNIST_DATA_DIR=str(data_dir))
    said = result.stderr.replace("\n", " ")
    assert result.returncode == 2 and said.startswith("error: trainer.accelerator=gpu"), said[-2000:]
    assert "Traceback" not in said and "No supported gpu backend" not in said  # Lightning's words, before
    assert "trainer.accelerator=cpu" in said and "auto" in said
    if torch.version.cuda is None:
        assert "CPU-only build" in said and "install the CUDA build" in said
    assert not log_dir.exists()  # no outputs/<date>/ left behind


def test_gpu_refusal_says_whether_torch_is_cpu_only_or_sees_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    gpu = OmegaConf.create({"accelerator": "gpu"})
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    with pytest.raises(UserError, match="built for CUDA 12.6.*sees no usable GPU") as refused:
        check_accelerator(gpu)
    assert "CUDA_VISIBLE_DEVICES=''" in str(refused.value) and "trainer.accelerator=cpu" in str(refused.value)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(UserError, match="CPU-only build"):
        check_accelerator(OmegaConf.create({"accelerator": "cuda"}))
    for fine in ("cpu", "auto"):
        check_accelerator(OmegaConf.create({"accelerator": fine}))


def test_cpu_training_runs_with_channels_last_conv_weights_and_hands_them_back_contiguous() -> None:
    """oneDNN's convolutions run faster channels-last on a CPU: the fit and the test switch the network's 4D weights
    to that layout before the first step (and before any DDP wrapping) and back when they end."""
    class Layout(L.Callback):
        seen: list[bool] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            self.seen.append(pl_module.net.patch_embed.stem[3].weight.is_contiguous(memory_format=torch.channels_last))

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    spec = get_spec("mnist")
    model = {"image_size": 28, "in_channels": 1, "num_classes": 10, "patch_size": 4, "hidden_dim": 32, "depth": 1,
             "heads": 2, "mlp_dim": 32, "stem": "cct", "pool": "seq"}
    module = ViTClassifier(model=model, class_names=list(spec.classes), normalize={"mean": spec.mean, "std": spec.std})
    layout = Layout()
    weight = module.net.patch_embed.stem[3].weight  # a 3x3 convolution of 8 channels: the layouts differ
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    data = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[layout], limit_val_batches=0)
    trainer.fit(module, data)
    assert layout.seen == [True, True]
    assert module.net.patch_embed.stem[3].weight.is_contiguous()
    trainer.test(module, data, verbose=False)
    assert layout.seen == [True, True, True, True] and module.net.patch_embed.stem[3].weight.is_contiguous()
    # the after-fit step's and the benchmarks' passes too, with the very same outputs, the network left as it was
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        expected = module.net.eval()((images.float() / 255 - spec.mean) / spec.std)
    seen = []
    module.net.patch_embed.stem[3].register_forward_pre_hook(
        lambda conv, args: seen.append(conv.weight.is_contiguous(memory_format=torch.channels_last)))
    logits, _ = run_network(module.net, images, spec.mean, spec.std, batch_size=4)
    assert seen == [True, True] and torch.allclose(logits, expected, atol=1e-5)
    assert module.net.patch_embed.stem[3].weight.is_contiguous()
