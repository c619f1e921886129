"""The predict CLI and the checkpoint loader: same labels as the model on the dataset tensor, clear per-file errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import subprocess_env
from tests.deploy_helpers import tiny_checkpoint
from tests.synthetic import laid_out
from vit_mnist.data import MNISTDataModule, load_split
from vit_mnist.errors import UserError
from vit_mnist.inference import Predictor
from vit_mnist.inference.files import expand_images, predict, predict_files, print_table
from vit_mnist.training.checkpoints import load_module as load_checkpoint

pytestmark = pytest.mark.xdist_group("predict")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def png_files(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, ckpt: Path) -> tuple[list[str], np.ndarray]:
    """20 synthetic test images in MNIST's layout saved as PNG, and the model's labels on the same images as tensors."""
    images, _ = load_split("mnist", str(data_dir), "test", download=False)
    images = laid_out(images[:20])
    folder = tmp_path_factory.mktemp("pngs")
    files = []
    for i, image in enumerate(images):
        files.append(str(folder / f"test_{i:02d}.png"))
        Image.fromarray(image[0].numpy()).save(files[-1])
    module = load_checkpoint(ckpt)
    with torch.no_grad():
        x = MNISTDataModule(name="mnist", data_dir=str(data_dir)).transform(images, train=False)
        labels = module(x).argmax(dim=1).numpy()
    return files, labels


def test_png_from_the_test_set_gets_the_same_label_as_the_tensor(
    ckpt: Path, png_files: tuple[list[str], np.ndarray]
) -> None:
    files, expected = png_files
    assert len(set(expected.tolist())) >= 3  # a model that answers one class for everything would prove nothing
    results = predict_files(Predictor.from_checkpoint(ckpt), files)
    assert [r["label"] for r in results] == expected.tolist()
    for r in results:
        assert [t["probability"] for t in r["top_k"]] == sorted((t["probability"] for t in r["top_k"]), reverse=True)
        assert r["probability"] == r["top_k"][0]["probability"] and len(r["top_k"]) == 3


def test_cli_json_reports_each_bad_file_and_predicts_the_others(
    ckpt: Path, png_files: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    files, expected = png_files
    (tmp_path / "notes.txt").write_text("not an image")
    command = [sys.executable, "-m", "vit_mnist.predict", f"ckpt_path={ckpt}",
               f"images=[{files[0]},notes.txt,missing.png,{files[1]}]", "output=json", "top_k=2"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env=subprocess_env())
    assert result.returncode == 1, result.stderr  # some files failed
    predictions = json.loads(result.stdout)["predictions"]
    assert [p["file"] for p in predictions] == [files[0], "notes.txt", "missing.png", files[1]]
    assert predictions[0]["label"] == expected[0] and predictions[3]["label"] == expected[1]
    assert len(predictions[0]["top_k"]) == 2
    assert "not a readable image" in predictions[1]["error"] and "not a file" in predictions[2]["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no run folder, no .hydra, no log


def test_table_lists_labels_and_errors(ckpt: Path, png_files: tuple[list[str], np.ndarray], capsys,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files, expected = png_files
    monkeypatch.setenv("COLUMNS", "240")  # a terminal wide enough that rich folds no long temporary path
    results = predict_files(Predictor.from_checkpoint(ckpt), [files[2], "nope.png"])
    print_table(results, str(ckpt))
    out = capsys.readouterr().out
    assert "test_02.png" in out and "nope.png" in out and "error" in out
    assert f"{results[0]['probability']:.3f}" in out and results[0]["class_name"] == str(expected[2])


def test_folders_expand_to_their_images(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert expand_images([str(tmp_path), str(tmp_path / "empty")]) == [
        str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), str(tmp_path / "empty")]


def test_run_refuses_bad_settings(ckpt: Path, png_files: tuple[list[str], np.ndarray], tmp_path: Path) -> None:
    files, _ = png_files
    base = {"ckpt_path": str(ckpt), "images": files[:1], "output": "table", "top_k": 3, "layout": "auto"}
    for change, message in (({"images": []}, "No images"), ({"output": "xml"}, "output="),
                            ({"top_k": 11}, "top_k=11"), ({"images": ["missing.png"]}, "None of the 1 images"),
                            ({"layout": "centre"}, "layout=")):
        with pytest.raises(UserError, match=message):
            predict(OmegaConf.create({**base, **change}))


def test_checkpoint_errors_say_what_is_wrong(ckpt: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    foreign = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    edited = tmp_path / "edited.ckpt"
    content = torch.load(ckpt, map_location="cpu", weights_only=True)
    content["hyper_parameters"]["model"]["hidden_dim"] = 48
    torch.save(content, edited)
    cases = [(None, "not set"), (tmp_path / "missing.ckpt", "does not exist"), (tmp_path, "is a folder"),
             (truncated, "not a readable"), (text, "not a readable"), (foreign, "not a vit-mnist training checkpoint"),
             (edited, "do not fit")]
    for path, message in cases:
        with pytest.raises(UserError, match=message):
            load_checkpoint(path)
    assert not load_checkpoint(ckpt).training  # the good one loads, in eval mode
