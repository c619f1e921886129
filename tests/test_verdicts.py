"""The verdict with every answer: fitted after training, stored in the checkpoint, given by predict, the API and serve."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from omegaconf import OmegaConf
from PIL import Image

from tests.deploy_helpers import tiny_checkpoint
from tests.synthetic import laid_out
from vit_mnist import load_model
from vit_mnist.data import MNISTDataModule, image_cache, load_split
from vit_mnist.errors import UserError
from vit_mnist.inference import Predictor
from vit_mnist.inference.files import predict, predict_files
from vit_mnist.inference.predictor import verdict_message
from vit_mnist.inference.web import create_app
from vit_mnist.ood.detector import CHECKPOINT_KEY, VERDICTS
from vit_mnist.ood.thresholds import ACCEPTANCE_LEVELS, DIGIT_ACCEPTANCE
from vit_mnist.training.after_fit import CHECK_IMAGES, threshold_check_images
from vit_mnist.training.checkpoints import read_checkpoint, write_checkpoint
from vit_mnist.training.checks import validate

pytestmark = pytest.mark.xdist_group("verdicts")

NO_DETECTOR = "holds no out-of-domain detector"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def val_images(data_dir: Path) -> torch.Tensor:
    """The tiny run's validation images (the data module's split), as the detector's thresholds saw them."""
    datamodule = MNISTDataModule(data_dir=str(data_dir), val_size=100)  # TINY's split (tests/conftest.py)
    datamodule.setup("fit")
    return datamodule.val_set.images


def with_thresholds(tiny: Path, tmp_path: Path, ood: float, unsure: float) -> Path:
    """A copy of the tiny checkpoint whose detector has these thresholds."""
    ckpt = read_checkpoint(tiny)
    ckpt[CHECKPOINT_KEY] = {**ckpt[CHECKPOINT_KEY], "ood_threshold": ood, "unsure_threshold": unsure}
    path = tmp_path / f"t_{ood}_{unsure}.ckpt"
    write_checkpoint(ckpt, path)
    return path


def test_training_stores_a_detector_that_accepts_99_percent_of_validation_digits(
        tiny: Path, val_images: torch.Tensor, data_dir: Path) -> None:
    state = read_checkpoint(tiny)[CHECKPOINT_KEY]
    assert state["score"] == "mahalanobis" and state["class_means"].shape[0] == 10
    assert 0.5 <= state["unsure_threshold"] <= 1.0
    assert state["temperature"] == pytest.approx(read_checkpoint(tiny)["calibration"]["temperature"])
    # the network's inputs as the data module makes them (the synthetic digits are not in MNIST's layout, so
    # predict's preprocessing would move them)
    x = MNISTDataModule(data_dir=str(data_dir)).transform(val_images, train=False).numpy()
    verdicts = Predictor.from_checkpoint(tiny).answer(x).verdicts
    assert len(verdicts) == len(val_images) and set(verdicts) <= set(VERDICTS)
    rejected = verdicts.count("out_of_domain") / len(verdicts)
    assert rejected <= 1 - DIGIT_ACCEPTANCE + 2 / len(verdicts)  # the threshold's own images: 1% (and ties)
    # the acceptance was checked on non-digits of every set (Fashion-MNIST's too: its files are in the data folder)
    assert state["info"]["digit_acceptance"] in ACCEPTANCE_LEVELS
    assert state["info"]["outlier_check_images"] == 5 * CHECK_IMAGES
    assert 0.0 <= state["info"]["outlier_check_confident"] <= 1.0


def test_the_detectors_check_images_are_made_once_then_read_from_the_cache(
        tiny: Path, data_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch) -> None:
    made = []
    real = image_cache.make_non_digits
    monkeypatch.setattr(image_cache, "make_non_digits", lambda *a: made.append(a[0]) or real(*a))
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    # the tiny run's after-fit step cached them in the run's paths.cache_dir: read back, none made
    trained = threshold_check_images(datamodule, cache_dir=str(cache_dir))
    assert made == [] and len(trained) == 5 * CHECK_IMAGES
    first = threshold_check_images(datamodule, cache_dir=str(tmp_path / "cache"))
    assert sorted(made) == sorted(["letters", "scribbles", "shapes", "noise", "fashion"])
    again = threshold_check_images(datamodule, cache_dir=str(tmp_path / "cache"))
    assert len(made) == 5 and torch.equal(first, again) and torch.equal(first, trained)
    assert torch.equal(first, threshold_check_images(datamodule))  # as made without a cache
    assert len(made) == 10


def test_verdicts_follow_the_thresholds_everywhere(tiny: Path, tmp_path: Path, data_dir: Path) -> None:
    images = laid_out(load_split("mnist", str(data_dir), "test", download=False)[0][:4])
    png = tmp_path / "d.png"
    Image.fromarray(images[0, 0].numpy()).save(png)
    cases = {"out_of_domain": (-1.0, 0.0), "unsure": (1e30, 1.01), "confident": (1e30, 0.0)}
    for expected, (ood, unsure) in cases.items():
        ckpt = with_thresholds(tiny, tmp_path, ood, unsure)
        assert load_model(ckpt).predict(images).verdicts == [expected] * 4
        predictor = Predictor.from_checkpoint(ckpt)
        result = predict_files(predictor, [str(png)])[0]
        assert result["verdict"] == expected
        with TestClient(create_app(predictor)) as client:
            body = client.post("/api/predict", json={"pixels": images[0, 0].tolist()}).json()
        assert body["verdict"] == expected and body["message"] == result["message"]
        if expected == "unsure":
            top2 = [predictor.class_names[i] for i in np.argsort(-np.array(body["probabilities"]))[:2]]
            assert body["candidates"] == top2 and body["message"] == f"Not sure: {top2[0]} or {top2[1]}?"
        elif expected == "out_of_domain":
            assert body["message"] == "That doesn't look like a digit." and body["candidates"] == []
        else:
            assert body["message"] == "" and body["candidates"] == []


def test_the_message_names_the_kind_of_image() -> None:
    assert verdict_message("out_of_domain", [], "garment") == "That doesn't look like a garment."
    assert verdict_message("unsure", ["4", "9"], "digit") == "Not sure: 4 or 9?"
    assert verdict_message("confident", [], "digit") == ""


def test_predict_json_and_table_carry_the_verdict(tiny: Path, tmp_path: Path, data_dir: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    image = laid_out(load_split("mnist", str(data_dir), "test", download=False)[0][:1])[0, 0].numpy()
    Image.fromarray(image).save(tmp_path / "d.png")
    ckpt = with_thresholds(tiny, tmp_path, -1.0, 0.0)
    cfg = OmegaConf.create({"ckpt_path": str(ckpt), "images": [str(tmp_path / "d.png")], "layout": "auto",
                            "top_k": 3, "output": "json"})
    predict(cfg)
    out = json.loads(capsys.readouterr().out)["predictions"][0]
    assert out["verdict"] == "out_of_domain" and out["message"] == "That doesn't look like a digit."
    predict(OmegaConf.merge(cfg, {"output": "table"}))
    assert "verdict" in capsys.readouterr().out


def test_a_checkpoint_without_a_detector_says_so_once(tiny: Path, tmp_path: Path, val_images: torch.Tensor,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    ckpt = read_checkpoint(tiny)
    ckpt.pop(CHECKPOINT_KEY)
    old = tmp_path / "old.ckpt"
    write_checkpoint(ckpt, old)
    with caplog.at_level(logging.WARNING):
        classifier = load_model(old)
        verdicts = classifier.predict(val_images[:50]).verdicts + classifier.predict(val_images[:5]).verdicts
    assert set(verdicts) <= {"confident", "unsure"}
    assert [NO_DETECTOR in r.getMessage() for r in caplog.records].count(True) == 1
    warning = next(r.getMessage() for r in caplog.records if NO_DETECTOR in r.getMessage())
    assert f"python -m vit_mnist.calibrate ckpt_path={old}" in warning  # the fix, not "retrain"


def test_a_damaged_detector_is_a_user_error(tiny: Path, tmp_path: Path) -> None:
    ckpt = read_checkpoint(tiny)
    ckpt[CHECKPOINT_KEY] = {"score": "mahalanobis", "ood_threshold": "x"}
    bad = tmp_path / "bad.ckpt"
    write_checkpoint(ckpt, bad)
    with pytest.raises(UserError, match="out-of-domain detector is damaged"):
        load_model(bad)


def test_a_bad_ood_score_is_refused_before_training(make_cfg) -> None:
    cfg = make_cfg("ood_score=distance")
    with pytest.raises(UserError, match="ood_score='distance' is not an out-of-domain score"):
        validate(cfg)
    for key, said in (("verdict_unsure_on=writers", "verdict_unsure_on='writers'"),
                      ("verdict_stats_on=noise", "verdict_stats_on='noise'"),
                      ("verdict_flat_gate=0.9", "verdict_flat_gate=0.9"),
                      ("verdict_shift_strength=0", "verdict_shift_strength=0"),
                      ("verdict_max_acceptance=1", "verdict_max_acceptance=1"),
                      ("calibrate_on=foggy", "calibrate_on='foggy'")):
        with pytest.raises(UserError, match=said):
            validate(make_cfg(key))
