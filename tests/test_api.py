"""The Python API (`from vit_mnist import load_model`): the documented example runs; answers match `predict`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CNN_TINY, trained_run
from tests.deploy_helpers import tiny_checkpoint
from tests.synthetic import laid_out
from vit_mnist import Classifier, Predictions, load_model
from vit_mnist.data import MNISTDataModule, load_split
from vit_mnist.errors import UserError
from vit_mnist.inference import Predictor
from vit_mnist.inference.files import predict_files
from vit_mnist.training.checkpoints import load_module as load_checkpoint

pytestmark = pytest.mark.xdist_group("api")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deployment.md"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny ViT (shared with the deployment tests) and a tiny CNN, 2 epochs each on the synthetic MNIST."""
    _, cnn = trained_run(tmp_path_factory, data_dir, "trainer.max_epochs=2", "logger=csv", base=CNN_TINY)
    return {"vit": tiny_checkpoint(tmp_path_factory, data_dir), "cnn": Path(cnn["best_checkpoint"])}


@pytest.fixture(scope="module")
def test_images(data_dir: Path) -> torch.Tensor:
    images, _ = load_split("mnist", str(data_dir), "test", download=False)
    return laid_out(images[:24])  # uint8 (24, 1, 28, 28), in MNIST's layout


def _model_labels(ckpt: Path, images: torch.Tensor, data_dir: Path) -> np.ndarray:
    """The labels the network gives the dataset tensors through training's own transform."""
    module = load_checkpoint(ckpt)
    with torch.no_grad():
        x = MNISTDataModule(name="mnist", data_dir=str(data_dir)).transform(images, train=False)
        return module(x).argmax(dim=1).numpy()


def test_documented_example_runs(checkpoints: dict[str, Path], test_images: torch.Tensor, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"^## Python API\n.*?```python\n(.*?)```", DOC.read_text(), re.S | re.M)
    # the files the example names: the checkpoint, a 28x28 digit and a larger photo-like scan (dark on light)
    ckpt = tmp_path / "outputs/2024-05-01/12-00-00/checkpoints/best.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(checkpoints["vit"], ckpt)
    Image.fromarray(test_images[0, 0].numpy()).save(tmp_path / "my_digit.png")
    scan = Image.fromarray(255 - test_images[1, 0].numpy()).resize((84, 84), Image.Resampling.BILINEAR)
    scan.save(tmp_path / "scan.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "vit ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']"
    assert out[2] == "(2, 10)"
    files = predict_files(Predictor.from_checkpoint(ckpt), ["my_digit.png", "scan.jpg"])
    model = namespace["model"]
    result = model.predict(["my_digit.png", "scan.jpg"])
    assert result.labels.tolist() == [f["label"] for f in files]  # the same answers as `vit-mnist predict`
    assert out[1] == f"{result.labels} {result.names}"
    assert out[-1] == files[0]["class_name"]  # the PIL image of my_digit.png
    assert len(namespace["result"]) == 3 and out[3] == str(namespace["result"].names)


@pytest.mark.parametrize("arch", ["vit", "cnn"])
def test_arrays_tensors_pil_and_files_agree_with_the_model(arch: str, checkpoints: dict[str, Path],
                                                          test_images: torch.Tensor, data_dir: Path,
                                                          tmp_path: Path) -> None:
    ckpt = checkpoints[arch]
    expected = _model_labels(ckpt, test_images, data_dir)
    assert len(set(expected.tolist())) >= 3  # a model that answers one class for everything would prove nothing
    model = load_model(ckpt)
    assert isinstance(model, Classifier) and model.arch == arch and model.classes == [str(i) for i in range(10)]

    from_tensor = model.predict(test_images)  # (N, 1, 28, 28) uint8 tensor
    assert isinstance(from_tensor, Predictions) and len(from_tensor) == len(test_images)
    assert from_tensor.labels.tolist() == expected.tolist()
    assert from_tensor.probabilities.shape == (len(test_images), 10)
    np.testing.assert_allclose(from_tensor.probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert np.array_equal(from_tensor.probabilities.argmax(axis=1), from_tensor.labels)
    assert from_tensor.names == [str(k) for k in expected]

    arrays = test_images[:, 0].numpy()
    np.testing.assert_allclose(model.predict(arrays).probabilities, from_tensor.probabilities, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.predict(arrays, batch_size=5).probabilities, from_tensor.probabilities,
                               rtol=1e-5, atol=1e-7)  # sliced batches give the same answers
    assert model.predict(arrays[3]).labels.tolist() == [expected[3]]  # one (28, 28) image
    pil = [Image.fromarray(a) for a in arrays[:4]]
    assert model.predict(pil).labels.tolist() == expected[:4].tolist()

    files = []
    for i, a in enumerate(arrays[:6]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(files[-1])
    by_predict = predict_files(Predictor.from_checkpoint(ckpt), [str(f) for f in files])
    from_files = model.predict(files)
    assert from_files.labels.tolist() == [r["label"] for r in by_predict] == expected[:6].tolist()
    np.testing.assert_allclose(from_files.probabilities.max(axis=1), [r["probability"] for r in by_predict],
                               rtol=1e-9)


def test_mistakes_name_the_image(checkpoints: dict[str, Path], test_images: torch.Tensor, tmp_path: Path) -> None:
    model = load_model(checkpoints["vit"])
    good = test_images[0, 0].numpy()
    with pytest.raises(UserError, match=r"image 1 \(.*missing\.png\): .*is not a file"):
        model.predict([good, str(tmp_path / "missing.png")])
    with pytest.raises(UserError, match="image 2: No digit found"):
        model.predict([good, good, np.zeros((40, 40), dtype=np.uint8)])
    with pytest.raises(UserError, match="No images given"):
        model.predict([])
    with pytest.raises(UserError, match="layout='fit'"):
        model.predict(good, layout="fit")
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope.ckpt")
