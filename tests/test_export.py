"""ONNX and TorchScript export: parity with PyTorch, dynamic batch axis, metadata, nothing written on failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import TINY, compose_config
from tests.deploy_helpers import tiny_checkpoint
from vit_mnist.data import MNISTDataModule, load_split
from vit_mnist.errors import UserError
from vit_mnist.inference.export import export, read_onnx_metadata
from vit_mnist.training.checkpoints import load_module as load_checkpoint
from vit_mnist.training.fit import train

pytestmark = pytest.mark.xdist_group("export")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_dir)


def normalised_test_images(data_dir: str | Path, count: int) -> torch.Tensor:
    """The first `count` test images, normalised exactly as in training."""
    images, _ = load_split("mnist", str(data_dir), "test", download=False)
    return MNISTDataModule(name="mnist", data_dir=str(data_dir)).transform(images[:count], train=False)


def assert_onnx_matches_pytorch(model_path: Path, ckpt: Path, x: torch.Tensor, atol: float = 1e-4) -> None:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    module = load_checkpoint(ckpt)
    with torch.no_grad():
        expected = module(x)
    for batch in (x[:1], x):  # batch 1 and the full batch: the batch axis is dynamic
        logits, probabilities, _ = session.run(None, {"image": batch.numpy()})
        np.testing.assert_allclose(logits, expected[: len(batch)].numpy(), atol=atol, rtol=0)
        calibrated = (expected[: len(batch)] / module.temperature).softmax(dim=1)  # the checkpoint's temperature
        np.testing.assert_allclose(probabilities, calibrated.numpy(), atol=atol, rtol=0)


def test_onnx_next_to_checkpoint_matches_pytorch_and_records_metadata(ckpt: Path, data_dir: Path) -> None:
    summary = export(ckpt, "onnx")
    path = ckpt.parent / "model.onnx"
    assert summary["output"] == str(path) and path.is_file()
    assert summary["max_abs_diff"] <= 1e-4
    assert_onnx_matches_pytorch(path, ckpt, normalised_test_images(data_dir, 37))
    meta = read_onnx_metadata(path)
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    assert float(meta["normalize_mean"]) == pytest.approx(0.1307)
    assert float(meta["normalize_std"]) == pytest.approx(0.3081)
    assert meta["dataset"] == "mnist" and "28" in meta["input"]
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_torchscript_export_matches_pytorch(ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    summary = export(ckpt, "torchscript", output=tmp_path / "vit.pt")
    extra = {"metadata.json": ""}
    module = torch.jit.load(summary["output"], map_location="cpu", _extra_files=extra)
    x = normalised_test_images(data_dir, 9)
    with torch.no_grad():
        logits, _, _ = module(x)
        expected = load_checkpoint(ckpt)(x)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert json.loads(extra["metadata.json"])["normalize_mean"] == "0.1307"


def test_bad_settings_write_nothing(ckpt: Path, tmp_path: Path) -> None:
    for kwargs, message in (({"fmt": "tflite"}, "format="), ({"output": tmp_path / "no" / "m.onnx"}, "does not exist"),
                            ({"output": tmp_path}, "is a folder"), ({"check_batch": 0}, "check_batch"),
                            ({"opset": 99}, "opset=99")):
        with pytest.raises(UserError, match=message):
            export(ckpt, **kwargs)
    with pytest.raises(UserError, match="does not exist"):
        export(tmp_path / "missing.ckpt", output=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_opset_the_exporter_cannot_reach_is_refused_not_silently_replaced(ckpt: Path, tmp_path: Path) -> None:
    # torch's exporter writes opset 18 and keeps it when converting the ViT down fails: the file must not claim 13
    with pytest.raises(UserError, match=r"opset=13: it wrote opset 18.*Use opset=18"):
        export(ckpt, "onnx", output=tmp_path / "m.onnx", opset=13)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_onnx_parity_on_256_real_mnist_test_images(tmp_path: Path) -> None:
    """On real digits with a checkpoint trained on real MNIST: VIT_MNIST_CKPT if set, else a short real run."""
    data_dir = os.environ.get("VIT_MNIST_DATA_DIR", "")
    if not (Path(data_dir) / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST not found: set VIT_MNIST_DATA_DIR to a folder holding MNIST/raw")
    ckpt = Path(os.environ["VIT_MNIST_CKPT"]) if os.environ.get("VIT_MNIST_CKPT") else None
    if ckpt is None:
        overrides = [f"paths.data_dir={data_dir}", "trainer.max_epochs=1", "trainer.limit_train_batches=30",
                     "test=false", "logger=csv"]
        cfg = compose_config(TINY + overrides, tmp_path / "run")
        train(cfg)
        ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    summary = export(ckpt, "onnx", output=tmp_path / "model.onnx")
    x = normalised_test_images(data_dir, 256)
    assert_onnx_matches_pytorch(Path(summary["output"]), ckpt, x)


@pytest.mark.parametrize(("fmt", "gate"), [("onnx", 0.0), ("torchscript", 0.0), ("onnx", 0.45)],
                         ids=["onnx", "torchscript", "onnx-flat-gate"])
def test_the_exported_verdicts_equal_predict_s_on_digits_and_non_digits(fmt: str, gate: float, ckpt: Path,
                                                                        data_dir: Path, tmp_path: Path) -> None:
    from vit_mnist.data.non_digits import make_non_digits
    from vit_mnist.inference.predictor import Predictor

    ungated = Predictor.from_checkpoint(ckpt)
    if gate:  # the flat-softmax gate in the graph too, alone: the score rejects nothing
        state = torch.load(ckpt, weights_only=True)
        state["ood_detector"].update(flat_threshold=gate, ood_threshold=float("inf"))
        torch.save(state, ckpt := tmp_path / "gated.ckpt")
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.detector is not None  # the shared tiny run fitted one: the graph carries it
    letters = make_non_digits("letters", 24, 0, "benchmark")  # already in MNIST's layout, as predict makes images
    batch = torch.cat([normalised_test_images(data_dir, 24), (letters.float() / 255 - predictor.mean) / predictor.std])
    summary = export(ckpt, fmt, output=tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt"))
    if fmt == "onnx":
        codes = ort.InferenceSession(summary["output"], providers=["CPUExecutionProvider"]).run(
            ["verdict"], {"image": batch.numpy()})[0]
        meta = read_onnx_metadata(summary["output"])
    else:
        extra = {"metadata.json": ""}
        module = torch.jit.load(summary["output"], map_location="cpu", _extra_files=extra)
        codes = module(batch)[2].numpy()
        meta = json.loads(extra["metadata.json"])
    names = json.loads(meta["verdict_codes"])
    exported = [names[str(int(code))] for code in codes]
    assert exported == predictor.answer(batch.numpy()).verdicts
    assert "out_of_domain" in exported and codes.dtype == np.int64  # the letters are not all taken for digits
    assert "Mahalanobis" in meta["verdict_detector"]
    assert (f"or below a calibrated top-1 probability of {gate:g}" in meta["verdict_detector"]) is bool(gate)
    if gate:  # it fires on this batch, so the graph was checked with it at work: the answers under the gate, only
        top1 = ungated.answer(batch.numpy()).probabilities.max(axis=1)
        assert exported.count("out_of_domain") == int((top1 < gate).sum()) > 0
