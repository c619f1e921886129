"""`python -m vit_mnist.evaluate` on synthetic IDX data: reproduces training's numbers, writes every report, refuses bad input."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.builders import untrained_checkpoint
from tests.conftest import compose_config, run_module, trained_run
from tests.deploy_helpers import TINY_RUN
from vit_mnist.data import load_split
from vit_mnist.data.sources import get_spec
from vit_mnist.errors import UserError
from vit_mnist.evaluation.checkpoint_data import checked_dataset, checkpoint_datamodule
from vit_mnist.evaluation.evaluate import evaluate
from vit_mnist.reports.classification import REPORT_FILES
from vit_mnist.training.module import ViTClassifier

pytestmark = pytest.mark.xdist_group("evaluate")

ROOT = Path(__file__).resolve().parents[1]
# The evaluation side of TINY: same test batches as the training run, quiet, CPU.
EVAL = ["data.eval_batch_size=100", "data.download=false", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return trained_run(tmp_path_factory, data_dir, *TINY_RUN)


def eval_config(data_dir: Path, out: Path, ckpt: Path | str, *overrides: str):
    return compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}", *EVAL, *overrides], out, "evaluate")


def test_evaluate_reproduces_the_training_run(trained: tuple[Path, dict], data_dir: Path, tmp_path: Path) -> None:
    train_dir, train_metrics = trained
    metrics = evaluate(eval_config(data_dir, tmp_path, train_metrics["best_checkpoint"]))
    test_keys = sorted(k for k in train_metrics if k.startswith("test/"))
    assert {"test/acc", "test/f1_macro", "test/loss", "test/ece", "test/f1_per_class"} <= set(test_keys)
    assert sorted(k for k in metrics if k.startswith("test/")) == test_keys
    for key in test_keys:
        assert metrics[key] == train_metrics[key], key  # exactly: same checkpoint, same data, same batches
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics

    # One code path: the training run's test stage wrote the same reports from the same numbers.
    for folder in (tmp_path, train_dir):
        for name in REPORT_FILES:
            assert (folder / name).is_file(), (folder, name)
            if name.endswith(".png"):
                image = plt.imread(folder / name)
                assert image.ndim == 3 and min(image.shape[:2]) >= 200, name
    report = json.loads((tmp_path / "classification_report.json").read_text())
    assert report == json.loads((train_dir / "classification_report.json").read_text())

    # Accuracy computed independently: run the checkpoint on the raw test images and count.
    module = ViTClassifier.load_from_checkpoint(train_metrics["best_checkpoint"], map_location="cpu").eval()
    images, labels = load_split("mnist", str(data_dir), "test", download=False)
    spec = get_spec("mnist")
    with torch.no_grad():
        preds = module((images.float() / 255 - spec.mean) / spec.std).argmax(dim=1)
    correct = int((preds == labels).sum())
    assert report["accuracy"] == pytest.approx(correct / len(labels), abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(correct / len(labels), abs=1e-6)
    assert report["num_samples"] == metrics["num_samples"] == len(labels) == 200

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    assert {"test/acc", "test/ece", "test/f1_macro"} <= set(events.Tags()["scalars"])
    assert {f"test/{n}" for n in ("confusion_matrix", "misclassified", "calibration", "attention")} <= set(
        events.Tags()["images"])
    assert "test/classification_report/text_summary" in events.Tags()["tensors"]


def test_evaluate_says_when_it_computes_in_another_precision_than_the_run(
        data_dir: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A run that tested itself in bf16 (the fast recipes on a CPU with native bf16) records it in its checkpoint;
    evaluate computes in fp32 unless told, says so, and reproduces the run's figures exactly when told."""
    _, run = trained_run(tmp_path_factory, data_dir, "trainer.max_epochs=1", "trainer.precision=bf16-mixed",
                         "logger=csv")
    ckpt = run["best_checkpoint"]
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["trainer_precision"] == "bf16-mixed"
    plain = evaluate(eval_config(data_dir, tmp_path / "fp32", ckpt))
    said = " ".join(capsys.readouterr().out.split())
    assert (plain["precision"], plain["run_precision"]) == ("32-true", "bf16-mixed")
    assert "computed in 32-true, the run tested itself in bf16-mixed" in said
    assert "trainer.precision=bf16-mixed reproduces the run's exactly" in said
    same = evaluate(eval_config(data_dir, tmp_path / "bf16", ckpt, "trainer.precision=bf16-mixed"))
    assert "note:" not in capsys.readouterr().out
    for key in ("test/acc", "test/loss", "test/ece"):
        assert same[key] == run[key], key


def test_tta_override_scores_the_shifted_views(trained: tuple[Path, dict], data_dir: Path, tmp_path: Path) -> None:
    from vit_mnist.models.tta import tta_logits

    _, train_metrics = trained
    metrics = evaluate(eval_config(data_dir, tmp_path, train_metrics["best_checkpoint"], "tta=true"))
    assert metrics["tta"] is True
    module = ViTClassifier.load_from_checkpoint(train_metrics["best_checkpoint"], map_location="cpu").eval()
    images, labels = load_split("mnist", str(data_dir), "test", download=False)
    spec = get_spec("mnist")
    with torch.no_grad():
        preds = tta_logits(module, (images.float() / 255 - spec.mean) / spec.std).argmax(dim=1)
    assert metrics["test/acc"] == pytest.approx(float((preds == labels).float().mean()), abs=1e-6)


def test_val_split_reproduces_the_best_validation_accuracy(trained: tuple[Path, dict], data_dir: Path,
                                                           tmp_path: Path) -> None:
    _, train_metrics = trained
    # The config's data.val_size is 5000; the checkpoint's own split (val_size=100) must be used instead.
    metrics = evaluate(eval_config(data_dir, tmp_path, train_metrics["best_checkpoint"], "split=val"))
    assert metrics["val/acc"] == train_metrics["val/acc_best"]
    assert metrics["num_samples"] == 100 and not any(k.startswith("test/") for k in metrics)
    assert json.loads((tmp_path / "classification_report.json").read_text())["split"] == "val"


def bad_checkpoints(tmp_path: Path, best: Path) -> dict[str, tuple[str, list[str], str]]:
    """name -> (ckpt_path, extra overrides, part of the message)."""
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    tensors = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, tensors)
    return {
        "missing": (str(tmp_path / "nope.ckpt"), [], "does not exist"),
        "folder": (str(tmp_path), [], "is a folder"),
        "truncated": (str(truncated), [], "truncated, corrupt or not a checkpoint"),
        "text": (str(text), [], "truncated, corrupt or not a checkpoint"),
        "not_ours": (str(tensors), [], "not a vit-mnist training checkpoint"),
        "other_dataset": (str(best), ["data=fashion_mnist"], "was trained on mnist, but data=fashion_mnist"),
        "five_classes": (str(untrained_checkpoint(tmp_path / "five.ckpt", "mnist", 5)), [], "model for 5 classes"),
        "bad_split": (str(best), ["split=train"], "split='train'"),
        "two_devices": (str(best), ["trainer.devices=2"], "runs on one device"),
    }


def test_bad_input_gives_its_message_and_writes_nothing(trained: tuple[Path, dict], data_dir: Path,
                                                        tmp_path: Path) -> None:
    best = Path(trained[1]["best_checkpoint"])
    files = tmp_path / "files"
    files.mkdir()
    for name, (ckpt, overrides, message) in bad_checkpoints(files, best).items():
        out = tmp_path / name
        with pytest.raises(UserError, match=re.escape(message)):
            evaluate(eval_config(data_dir, out, ckpt, *overrides))
        assert not any(out.iterdir()), name
    with pytest.raises(UserError, match="No checkpoint to evaluate"):
        evaluate(compose_config([f"paths.data_dir={data_dir}"], tmp_path / "none", "evaluate"))


def test_data_comes_from_what_the_checkpoint_recorded(tmp_path: Path) -> None:
    """Dataset, val_size and split_seed come from the checkpoint; the command line only says where files are."""
    ckpt_path = untrained_checkpoint(tmp_path / "f.ckpt", "fashion_mnist")
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["datamodule_hyper_parameters"] = {"name": "fashion_mnist", "val_size": 123, "split_seed": 7, "batch_size": 8}
    here = {"data_dir": str(tmp_path), "eval_batch_size": 50, "num_workers": 0, "download": False}
    assert checked_dataset([(str(ckpt_path), ckpt)], here) == "fashion_mnist"
    datamodule = checkpoint_datamodule(ckpt, "fashion_mnist", here)
    h = datamodule.hparams
    assert (h.name, h.val_size, h.split_seed, h.eval_batch_size, datamodule.data_dir) == (
        "fashion_mnist", 123, 7, 50, str(tmp_path))
    with pytest.raises(UserError, match="was trained on fashion_mnist, but data=mnist"):
        checked_dataset([(str(ckpt_path), ckpt)], {**here, "name": "mnist"})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("vit_mnist.evaluate", *args, *EVAL, cwd=ROOT)


def test_cli_mismatched_dataset_stops_before_making_a_folder(trained: tuple[Path, dict], data_dir: Path,
                                                             tmp_path: Path, run_in_process) -> None:
    run_dir = tmp_path / "eval"
    result = run_in_process("vit_mnist.evaluate", f"ckpt_path={trained[1]['best_checkpoint']}", "data=fashion_mnist",
                            f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", *EVAL, cwd=tmp_path)
    assert result.returncode == 2
    said = " ".join(result.stderr.split())  # the paragraph is wrapped to the terminal's width
    assert said.startswith("error: ckpt_path=") and "was trained on mnist" in said
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()


def test_cli_failure_inside_the_run_removes_its_folder(trained: tuple[Path, dict], tmp_path: Path,
                                                       run_in_process) -> None:
    run_dir = tmp_path / "eval"
    result = run_in_process("vit_mnist.evaluate", f"ckpt_path={trained[1]['best_checkpoint']}",
                            f"paths.data_dir={tmp_path / 'empty'}", f"hydra.run.dir={run_dir}", *EVAL, cwd=tmp_path)
    assert result.returncode == 2
    assert "The mnist dataset is missing" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()


def test_cli_evaluates_on_the_checkpoints_dataset(data_dir: Path, tmp_path: Path) -> None:
    ckpt = untrained_checkpoint(tmp_path / "fashion.ckpt", "fashion_mnist")
    run_dir = tmp_path / "eval"
    result = run_cli(f"ckpt_path={ckpt}", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "fashion_mnist" and metrics["num_samples"] == 200
    assert all((run_dir / name).is_file() for name in REPORT_FILES)
    assert "weighted avg" in result.stdout and "Ankle boot" in result.stdout  # the printed table
