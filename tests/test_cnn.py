"""The CNN baseline (`model=cnn`) through train, evaluate, export, serve and predict; old ViT checkpoints still load."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import lightning
import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import (
    CNN_TINY,
    TINY,
    compose_config,
    run_module,
    trained_run,
)
from vit_mnist.data import MNISTDataModule, load_split
from vit_mnist.errors import UserError
from vit_mnist.evaluation.evaluate import evaluate
from vit_mnist.inference import Predictor
from vit_mnist.inference.export import export, read_onnx_metadata
from vit_mnist.inference.files import predict_files
from vit_mnist.inference.web import create_app
from vit_mnist.models.cnn import CNNConfig, SmallCNN
from vit_mnist.models.registry import MAP_TITLES, build_network
from vit_mnist.models.vit import VisionTransformer, count_parameters
from vit_mnist.reports.classification import REPORT_FILES
from vit_mnist.training.checkpoints import load_module as load_checkpoint
from vit_mnist.training.checks import validate
from vit_mnist.training.fit import build
from vit_mnist.training.module import ViTClassifier

pytestmark = pytest.mark.xdist_group("cnn")

ROOT = Path(__file__).resolve().parents[1]


def cli(module: str, *args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    return run_module(module, *args, cwd=ROOT, **({"VIT_MNIST_DATA_DIR": str(data_dir)} if data_dir else {}))


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return trained_run(tmp_path_factory, data_dir, "trainer.max_epochs=2", "logger=csv", base=CNN_TINY)


def test_default_cnn_is_small_and_its_maps_decompose_the_logit() -> None:
    net = SmallCNN(CNNConfig()).eval()
    assert count_parameters(net) == 288_170 <= 1_000_000
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        logits = net(x)
        features = net.features(x)
    assert logits.shape == (3, 10) and features.shape == (3, 128, 7, 7)
    # Class activation map before clipping: its spatial mean plus the bias is the class's logit.
    classes = logits.argmax(dim=1)
    raw = torch.einsum("bchw,bc->bhw", features, net.head.weight[classes])
    torch.testing.assert_close(raw.mean(dim=(1, 2)) + net.head.bias[classes], logits[torch.arange(3), classes])
    maps = net.class_activation_maps(x, classes)
    assert maps.shape == (3, 7, 7) and maps.min() >= 0
    torch.testing.assert_close(maps.amax(dim=(1, 2)), torch.ones(3))


def test_trains_far_above_chance_and_the_checkpoint_says_cnn(trained: tuple[Path, dict], data_dir: Path) -> None:
    out, metrics = trained
    assert metrics["test/acc"] > 0.6 and metrics["val/acc_best"] > 0.6  # chance is 0.1
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["arch"] == "cnn"
    assert ckpt["hyper_parameters"]["model"]["widths"] == [16, 32]
    module = load_checkpoint(metrics["best_checkpoint"])
    assert isinstance(module.net, SmallCNN) and module.arch == "cnn" and module.map_title == MAP_TITLES["cnn"]
    assert metrics["num_parameters"] == count_parameters(module.net) and metrics["arch"] == "cnn"
    # Every report is written; attention.png holds class activation maps (the CNN has no attention).
    for name in REPORT_FILES:
        assert (out / name).is_file(), name


def test_cli_fast_dev_run(data_dir: Path, tmp_path: Path, run_in_process) -> None:
    run_dir = tmp_path / "fdr"
    result = run_in_process("vit_mnist.train", "model=cnn", "debug=fdr", "data.val_size=100", "trainer.accelerator=cpu",
                            f"hydra.run.dir={run_dir}", cwd=tmp_path, VIT_MNIST_DATA_DIR=str(data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and metrics["num_parameters"] == 288_170


def test_cli_evaluate_reproduces_the_run(trained: tuple[Path, dict], data_dir: Path, tmp_path: Path,
                                         run_in_process) -> None:
    _, train_metrics = trained
    run_dir = tmp_path / "eval"
    result = run_in_process("vit_mnist.evaluate", f"ckpt_path={train_metrics['best_checkpoint']}",
                            f"paths.data_dir={data_dir}", "data.eval_batch_size=100", "trainer.accelerator=cpu",
                            "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] == train_metrics["test/acc"] and metrics["num_samples"] == 200
    assert metrics["arch"] == "cnn"
    assert all((run_dir / name).is_file() for name in REPORT_FILES)


def test_attention_png_shows_class_activation_maps(trained: tuple[Path, dict], data_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import vit_mnist.reports.classification

    drawn = {}

    def spy(images, maps, targets, preds, class_names, title):
        drawn.update(maps=maps, title=title)
        return figure(images, maps, targets, preds, class_names, title)

    figure = vit_mnist.reports.classification.attention_figure
    monkeypatch.setattr(vit_mnist.reports.classification, "attention_figure", spy)
    evaluate(compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={trained[1]['best_checkpoint']}",
                             "data.eval_batch_size=100", "trainer.accelerator=cpu", "~logger"], tmp_path, "evaluate"))
    assert drawn["title"] == MAP_TITLES["cnn"] and drawn["title"].startswith("Class activation maps")
    assert drawn["maps"].shape == (10, 14, 14)  # one per class, on the last block's grid (28 -> 14 for 2 blocks)
    assert (tmp_path / "attention.png").is_file()


def test_onnx_export_matches_pytorch(trained: tuple[Path, dict], data_dir: Path, tmp_path: Path) -> None:
    ckpt = trained[1]["best_checkpoint"]
    summary = export(ckpt, "onnx", output=tmp_path / "cnn.onnx")
    assert summary["max_abs_diff"] <= 1e-4
    assert read_onnx_metadata(summary["output"])["model"] == "cnn"
    images, _ = load_split("mnist", str(data_dir), "test", download=False)
    x = MNISTDataModule(name="mnist", data_dir=str(data_dir)).transform(images[:37], train=False)
    module = load_checkpoint(ckpt)
    with torch.no_grad():
        expected = module(x)
    session = ort.InferenceSession(summary["output"], providers=["CPUExecutionProvider"])
    for batch in (x[:1], x):  # the batch axis is dynamic
        logits, probabilities, _ = session.run(None, {"image": batch.numpy()})
        np.testing.assert_allclose(logits, expected[: len(batch)].numpy(), atol=1e-4, rtol=0)
        calibrated = (expected[: len(batch)] / module.temperature).softmax(dim=1)  # the checkpoint's temperature
        np.testing.assert_allclose(probabilities, calibrated.numpy(), atol=1e-4, rtol=0)


def test_serve_and_predict(trained: tuple[Path, dict], data_dir: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(trained[1]["best_checkpoint"])
    images, _ = load_split("mnist", str(data_dir), "test", download=False)
    files = []
    for i in range(4):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(images[i, 0].numpy()).save(files[-1])
    with torch.no_grad():
        x = MNISTDataModule(name="mnist", data_dir=str(data_dir)).transform(images[:4], train=False)
        expected = predictor.net(x).argmax(dim=1).tolist()
    assert [r["label"] for r in predict_files(predictor, files)] == expected
    with TestClient(create_app(predictor)) as client:
        health = client.get("/healthz").json()
        assert health["model"] == "cnn" and "CNN" in health["model_name"]
        response = client.post("/api/predict", json={"pixels": images[0, 0].tolist()})
        assert response.status_code == 200 and response.json()["label"] == expected[0]


def test_checkpoint_without_arch_loads_as_a_vit(tmp_path: Path) -> None:
    """Checkpoints written before `model.arch` existed hold a ViT, and must keep loading everywhere."""
    model = {"image_size": 28, "in_channels": 1, "num_classes": 10, "patch_size": 7, "hidden_dim": 32, "depth": 1,
             "heads": 2, "mlp_dim": 64}
    module = ViTClassifier(model=model, normalize={"mean": 0.1307, "std": 0.3081})
    hparams = dict(module.hparams)
    hparams["model"] = {k: v for k, v in hparams["model"].items() if k != "arch"}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": lightning.__version__}, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded.net, VisionTransformer) and loaded.arch == "vit"
    assert Predictor.from_checkpoint(path).arch == "vit"
    assert isinstance(ViTClassifier.load_from_checkpoint(path, map_location="cpu").net, VisionTransformer)


def test_init_from_same_arch_loads_and_cross_arch_refuses(trained: tuple[Path, dict], data_dir: Path,
                                                          tmp_path: Path) -> None:
    best = trained[1]["best_checkpoint"]
    base = CNN_TINY + [f"paths.data_dir={data_dir}"]
    _, module = build(compose_config(base + [f"model.init_from={best}"], tmp_path / "a"))
    source = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, source[f"net.{k}"]) for k, v in module.net.state_dict().items())
    with pytest.raises(UserError, match=re.escape("model.widths=[16, 32] there but [16, 8] here")):
        build(compose_config(base + [f"model.init_from={best}", "model.widths=[16,8]"], tmp_path / "b"))
    vit = TINY + [f"paths.data_dir={data_dir}", f"model.init_from={best}"]
    with pytest.raises(UserError, match=r"holds the small CNN \(model=cnn\), but this run trains the Vision "):
        build(compose_config(vit, tmp_path / "c"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.widths=[]"], "model.widths=[] must be a non-empty list of positive integers"),
        (["model.widths=[32,0]"], "model.widths=[32, 0] must be a non-empty list"),
        (["model.widths=[8,8,8,8,8,8]"], "at most 5 blocks fit"),
        (["model.convs_per_block=0"], "model.convs_per_block=0 must be a positive integer"),
        (["model.dropout=1.0"], "model.dropout=1.0 must be in [0, 1)"),
        (["model.arch=resnet"], "model.arch='resnet' is not a network this project builds"),
        (["experiment=fast"], "model.patch_size, model.hidden_dim, model.depth, model.heads, model.mlp_dim, "
                              "model.stem, model.pool, model.ffn, model.drop_path are not options of model=cnn"),
    ],
)
def test_bad_cnn_config_values_give_their_message(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose_config(["model=cnn", *overrides], tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        validate(cfg)
    with pytest.raises(ValueError, match=re.escape(message)):  # also when built without `validate`: a plain ValueError
        build_network(OmegaConf.to_container(cfg.model, resolve=True))


def test_cnn_config_takes_widths_as_list_or_tuple_and_checks_them() -> None:
    from_yaml, from_code = CNNConfig(widths=[16, 32]), CNNConfig(widths=(16, 32))
    assert from_yaml == from_code and from_yaml.widths == (16, 32)  # a tuple either way: the config is immutable
    assert CNNConfig().widths == (32, 64, 128)
    net = SmallCNN(from_yaml)
    assert net.config is from_yaml and net.no_weight_decay() == set()
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match=re.escape("model.widths=[32, 0] must be a non-empty list")):
        CNNConfig(widths=(32, 0))
    with pytest.raises(ValueError, match=re.escape("model.convs_per_block=0 must be a positive integer")):
        CNNConfig(convs_per_block=0)


def test_vit_keys_set_on_a_cnn_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape("pick the network with `model=cnn` (not model.arch=cnn)")):
        validate(compose_config(["model.arch=cnn"], tmp_path))


def test_cli_bad_cnn_value_is_one_paragraph(tmp_path: Path, run_in_process) -> None:
    run_dir = tmp_path / "run"
    result = run_in_process("vit_mnist.train", "model=cnn", "model.widths=[8,8,8,8,8,8]", f"hydra.run.dir={run_dir}",
                            cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: model.widths=[8, 8, 8, 8, 8, 8]")
    assert "Traceback" not in result.stderr and not run_dir.exists()
