"""The corruption benchmark: every corruption well-behaved, accuracy counted right, reports written, bad input refused."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.builders import TABLE, digit_like, tiny_module
from tests.conftest import TINY, compose_config, run_module
from vit_mnist.data import load_split
from vit_mnist.data.corruptions import KINDS, corrupt
from vit_mnist.data.other_writers import load_other_writers
from vit_mnist.data.pen_photos import make_pen_photos
from vit_mnist.data.sources import get_spec
from vit_mnist.errors import UserError
from vit_mnist.evaluation.evaluate import evaluate
from vit_mnist.evaluation.robustness import robustness
from vit_mnist.reports.robustness import OUTPUT_FILES, robustness_markdown
from vit_mnist.robustness_suite.scoring import (
    ModelEntry,
    Scorer,
    per_class_accuracy,
    run_suite,
)
from vit_mnist.robustness_suite.suite import build_suite, seen_names
from vit_mnist.training.fit import train

pytestmark = pytest.mark.xdist_group("robustness")

ROOT = Path(__file__).resolve().parents[1]
# Kinds whose result does not depend on the seed: nothing random in them.
FIXED = {"brightness", "stripe", "scale", "canny_edges", "thin", "thick", "low_resolution"}
EVAL = ["data.eval_batch_size=100", "data.download=false"]


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.float() - b.float()) ** 2).mean().sqrt())


@pytest.mark.parametrize("name", list(TABLE))
def test_each_corruption_is_deterministic_keeps_format_and_changes_the_image(name: str) -> None:
    entry = TABLE[name]
    images = digit_like()
    level = entry["levels"][entry["severity"] - 1]
    first = corrupt(images, entry["kind"], level, seed=3, name=name)
    again = corrupt(images, entry["kind"], level, seed=3, name=name)
    assert torch.equal(first, again)
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert rms(first, images) > 1.0  # it changed the images
    if entry["kind"] not in FIXED:
        assert not torch.equal(first, corrupt(images, entry["kind"], level, seed=4, name=name))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_higher_severity_moves_the_image_further(kind: str) -> None:
    levels = next(e["levels"] for e in TABLE.values() if e["kind"] == kind)
    images = digit_like()
    distances = [rms(corrupt(images, kind, levels[s - 1], seed=0), images) for s in (1, 3, 5)]
    assert distances[0] < distances[1] < distances[2], distances


def test_every_kind_is_in_the_config_and_the_config_checks() -> None:
    assert {e["kind"] for e in TABLE.values()} == set(KINDS)
    mnist_c = [n for n, e in TABLE.items() if e["source"] == "mnist-c"]
    assert len(mnist_c) == 15
    suite = build_suite(TABLE)
    assert [c.name for c in suite] == list(TABLE)
    assert all(c.level == TABLE[c.name]["levels"][c.severity - 1] for c in suite)
    assert {c.severity for c in build_suite(TABLE, severity=5)} == {5}
    assert [c.name for c in build_suite(TABLE, only=["fog", "stripe"])] == ["stripe", "fog"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"only": ["fgo"]}, "names no corruption of the benchmark"),
    ({"severity": 6}, "is not a severity"),
    ({"severity": "high"}, "is not a severity"),
    ({"severity": True}, "is not a severity"),
])
def test_bad_suite_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_suite(TABLE, **kwargs)


def test_bad_table_entries_are_refused() -> None:
    with pytest.raises(UserError, match="is not a corruption this project implements"):
        build_suite({"x": {"kind": "smudge", "severity": 1, "levels": [1, 2, 3, 4, 5]}})
    with pytest.raises(UserError, match="must list the parameter at each of the 5"):
        build_suite({"x": {"kind": "rotate", "severity": 1, "levels": [0.1]}})


def test_seen_kinds_follow_the_training_augmentation() -> None:
    suite = build_suite(TABLE)
    assert seen_names(suite, {"rotation": 0.0, "translate": 0.0, "scale": [1.0, 1.0], "hflip": False}) == []
    assert seen_names(suite, {"rotation": 10.0, "translate": 0.0, "scale": [1.0, 1.0]}) == ["rotate"]
    robust = OmegaConf.load(ROOT / "conf/experiment/handwriting.yaml").data.augment  # experiment=robust's
    seen = set(seen_names(suite, OmegaConf.to_container(robust)))
    assert {"rotate", "scale", "translate", "off_centre", "elastic", "thin", "thick", "low_res_8",
            "shot_noise", "glass_blur"} <= seen
    assert not seen & {"fog", "brightness", "stripe", "zigzag", "dotted_line", "canny_edges", "shear"}


@pytest.mark.parametrize("tta", [False, True])
def test_benchmark_accuracy_equals_an_independent_count(tta: bool) -> None:
    from vit_mnist.models.tta import tta_logits

    module = tiny_module().eval()
    spec = get_spec("mnist")
    images = digit_like(60, seed=1)
    with torch.no_grad():  # labels that this untrained model gets partly right, so the count is not trivial
        labels = module((images.float() / 255 - spec.mean) / spec.std).argmax(dim=1)
    labels[::3] = (labels[::3] + 1) % 10
    suite = build_suite(TABLE, only=["rotate", "fog", "thick"])
    scorer = Scorer(module, spec.mean, spec.std, tta, torch.device("cpu"), 10, batch_size=7)
    results, shown = run_suite([ModelEntry("m", "m.ckpt", scorer, [])], images, labels, suite, seed=5, examples=4)
    for spec_c in suite:
        corrupted = corrupt(images, spec_c.kind, spec_c.level, seed=5, name=spec_c.name)
        with torch.no_grad():
            x = (corrupted.float() / 255 - spec.mean) / spec.std
            logits = tta_logits(module, x) if tta else module(x)
        correct = int((logits.argmax(dim=1) == labels).sum())
        assert results[0].accuracy[spec_c.name] == pytest.approx(correct / len(labels), abs=1e-7)
        assert torch.equal(shown[spec_c.name], corrupted[:4])
        # calibration under shift: the ECE of the calibrated probabilities, 15 bins, by hand
        confidence, predicted = (logits.double() / module.temperature).softmax(dim=-1).max(dim=-1)
        hits, ece = (predicted == labels).double(), 0.0
        bins = torch.clamp((confidence * 15).ceil().long() - 1, 0, 14)
        for b in range(15):
            inside = bins == b
            if inside.any():
                ece += float(inside.double().mean() * (confidence[inside].mean() - hits[inside].mean()).abs())
        assert results[0].ece[spec_c.name] == pytest.approx(ece, abs=1e-5)
    assert results[0].corrupted_ece == pytest.approx(sum(results[0].ece[s.name] for s in suite) / 3)
    assert results[0].mca == pytest.approx(sum(results[0].accuracy.values()) / 3)
    assert 0.0 < results[0].clean < 1.0
    assert results[0].other_writers is None  # not asked for


def test_other_writers_are_digits_in_the_mnist_layout() -> None:
    images, labels = load_other_writers()
    assert images.shape == (1797, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    x = images[:, 0].double()
    assert x.amax(dim=(1, 2)).min() > 200  # full-strength strokes (stretched to 255, then resampled)
    extents = []
    for axis in (1, 2):  # ink extent across the columns, then the rows
        inked = (x.amax(dim=axis) > 0).double()
        extents.append(28 - inked.argmax(dim=1) - inked.flip(1).argmax(dim=1))
    longer = torch.maximum(*extents)  # fitted to MNIST's 20x20 box, not scaled to fill 28x28
    assert longer.min() >= 19 and longer.max() <= 21
    rows = (x.sum(dim=2) * torch.arange(28.0)).sum(dim=1) / x.sum(dim=(1, 2))
    cols = (x.sum(dim=1) * torch.arange(28.0)).sum(dim=1) / x.sum(dim=(1, 2))
    assert (rows - 14).abs().max() < 1.0 and (cols - 14).abs().max() < 1.0  # centred by mass, as MNIST is


def test_other_writers_accuracy_equals_an_independent_count() -> None:
    module = tiny_module(seed=2).eval()
    spec = get_spec("mnist")
    images, labels = load_other_writers()
    scorer = Scorer(module, spec.mean, spec.std, False, torch.device("cpu"), 10, batch_size=500)
    results, _ = run_suite([ModelEntry("m", "m.ckpt", scorer, [])], images[:20], labels[:20], [],
                           digit_sets=["other_writers"])
    with torch.no_grad():
        predicted = module((images.float() / 255 - spec.mean) / spec.std).argmax(dim=1)
    assert results[0].other_writers == pytest.approx(float((predicted == labels).double().mean()), abs=1e-7)
    assert "pen_photos" not in results[0].digit_sets  # not asked for
    # per digit: each class's share read right, in the results and as a row of the report
    per_class = results[0].digit_sets_per_class["other_writers"]
    for digit in range(10):
        mine = predicted[labels == digit]
        assert per_class[digit] == pytest.approx(float((mine == digit).double().mean()), abs=1e-7)
    report = robustness_markdown(results, [], 20, 0)
    row = report.split("## Per digit")[1].split("\n## ")[0].strip().splitlines()[-1]
    assert row.split("|")[3:13] == [f" {100 * v:.2f} " for v in per_class]


def test_per_class_accuracy_on_a_hand_computed_case() -> None:
    preds, labels = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    got = per_class_accuracy(preds, labels, 4)
    assert got[:3] == pytest.approx([0.5, 0.5, 1.0]) and math.isnan(got[3])  # no image of class 3


def test_pen_photos_are_deterministic_mnist_layout_digits_scored_by_an_independent_count() -> None:
    from vit_mnist.data.preprocess import MIN_STROKE_WIDTH, measure_stroke_width

    images, labels = digit_like(12, seed=3), torch.arange(12) % 10
    photos = make_pen_photos(images, seed=4)
    assert photos.shape == images.shape and photos.dtype == torch.uint8
    assert torch.equal(photos, make_pen_photos(images, seed=4)) and not torch.equal(photos, make_pen_photos(images, 5))
    for photo in photos[:, 0].double().numpy():
        assert photo[[0, -1]].max() < 60 and photo[:, [0, -1]].max() < 60  # lit paper became MNIST's black
        # the fine pen (under one pixel of the 20x20 box) was thickened to MNIST's stroke width
        assert MIN_STROKE_WIDTH - 0.3 <= measure_stroke_width(photo) <= 4.5
    module = tiny_module(seed=2).eval()
    spec = get_spec("mnist")
    scorer = Scorer(module, spec.mean, spec.std, False, torch.device("cpu"), 10, batch_size=5)
    results, _ = run_suite([ModelEntry("m", "m.ckpt", scorer, [])], images, labels, [], seed=4, digit_sets=["pen_photos"])
    with torch.no_grad():
        predicted = module((photos.float() / 255 - spec.mean) / spec.std).argmax(dim=1)
    assert results[0].digit_sets["pen_photos"] == pytest.approx(float((predicted == labels).double().mean()), abs=1e-7)
    # `pen_photos` photographs the first N test digits only (the robustness command's pen_photos_images)
    results, _ = run_suite([ModelEntry("m", "m.ckpt", scorer, [])], images, labels, [], seed=4, digit_sets=["pen_photos"],
                           pen_photos=5)
    first = float((predicted[:5] == labels[:5]).double().mean())
    assert results[0].digit_sets["pen_photos"] == pytest.approx(first, abs=1e-7)


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("train")
    return train(compose_config(TINY + [f"paths.data_dir={data_dir}", "trainer.max_epochs=1", "robustness=true",
                                        "robustness_images=60"], out))


def robustness_config(data_dir: Path, out: Path, *overrides: str):
    return compose_config([f"paths.data_dir={data_dir}", *EVAL, *overrides], out, "robustness")


def test_clean_accuracy_equals_evaluate_and_reports_are_written(trained: dict, data_dir: Path, tmp_path: Path) -> None:
    ckpt = trained["best_checkpoint"]
    summary = robustness(robustness_config(data_dir, tmp_path / "rob", f"ckpt_path={ckpt}", "batch_size=100",
                                           "only=[fog,rotate,low_res_8]"))
    evaluated = evaluate(compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}", *EVAL,
                                         "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"],
                                        tmp_path / "eval", "evaluate"))
    model = summary["models"][0]
    assert model["clean_acc"] == evaluated["test/acc"]  # exactly: the same images, batches and operations
    assert set(model["acc"]) == {"fog", "rotate", "low_res_8"}
    # the default recipe rotates, translates and scales, and varies scan resolution and blur
    assert model["seen"] == ["rotate", "low_res_8"]
    assert model["unseen_mca"] == pytest.approx(model["acc"]["fog"])
    out = tmp_path / "rob"
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    rows = list(csv.reader((out / "robustness.csv").open()))
    assert rows[0][:3] == ["corruption", "severity", "source"] and [r[0] for r in rows[1:]] == [
        "clean", "mca", "unseen_mca", "other_writers", "pen_photos", "rotate", "fog", "low_res_8"]
    assert 0.0 <= float(rows[4][3]) <= 1.0 and model["other_writers_acc"] == pytest.approx(float(rows[4][3]), abs=1e-6)
    assert 0.0 <= float(rows[5][3]) <= 1.0 and model["pen_photos_acc"] == pytest.approx(float(rows[5][3]), abs=1e-6)
    assert "| rotate (s2) |" in (out / "robustness.md").read_text() and "*" in (out / "robustness.md").read_text()
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"robustness/mca", "robustness/clean", "robustness/acc/fog"} <= set(events.Tags()["scalars"])
    assert {"robustness/accuracy", "robustness/examples"} <= set(events.Tags()["images"])


def test_the_training_run_reports_robustness(trained: dict) -> None:
    out = Path(trained["best_checkpoint"]).parents[1]
    metrics = json.loads((out / "metrics.json").read_text())
    per_kind = {k: v for k, v in metrics.items() if k.startswith("test/corrupt/")}
    assert len(per_kind) == len(TABLE)
    assert metrics["test/mca"] == pytest.approx(sum(per_kind.values()) / len(per_kind))
    assert metrics["robustness_images"] == 60
    report = json.loads((out / "robustness.json").read_text())
    assert report["models"][0]["mca"] == pytest.approx(metrics["test/mca"])
    assert report["models"][0]["other_writers_acc"] == pytest.approx(metrics["test/other_writers"])
    assert report["models"][0]["pen_photos_acc"] == pytest.approx(metrics["test/pen_photos"])
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    plugins = events.PluginTagToContent("hparams")
    assert b"test/mca" in plugins["_hparams_/experiment"]  # the HParams tab compares runs by it
    assert {"robustness/mca", "robustness/unseen_mca"} <= set(events.Tags()["scalars"])


def test_several_checkpoints_side_by_side(trained: dict, data_dir: Path, tmp_path: Path) -> None:
    from tests.builders import untrained_checkpoint

    other = untrained_checkpoint(tmp_path / "untrained.ckpt", "mnist")
    summary = robustness(robustness_config(data_dir, tmp_path / "rob", f"ckpt_paths=[{trained['best_checkpoint']},{other}]",
                                           "names=[trained,untrained]", "only=[stripe]", "num_images=50",
                                           "pen_photos=false"))
    assert [m["name"] for m in summary["models"]] == ["trained", "untrained"]
    assert all(m["pen_photos_acc"] is None and m["other_writers_acc"] is not None for m in summary["models"])
    header = next(csv.reader((tmp_path / "rob" / "robustness.csv").open()))
    assert header[3:] == ["trained", "untrained"]
    assert "| | trained | untrained |" in (tmp_path / "rob" / "robustness.md").read_text()
    assert summary["num_images"] == 50


def test_serve_says_what_robustness_the_checkpoint_has(trained: dict, tmp_path: Path) -> None:
    from vit_mnist.inference.web import robustness_note

    note = robustness_note(trained["best_checkpoint"])  # a run with robustness=true
    report = json.loads((Path(trained["best_checkpoint"]).parents[1] / "robustness.json").read_text())
    assert f"{100 * report['models'][0]['mca']:.1f}% (mCA" in note
    assert f"other writers' digits {100 * report['models'][0]['other_writers_acc']:.1f}%" in note
    assert f"fine-pen photos {100 * report['models'][0]['pen_photos_acc']:.1f}%" in note
    assert "was not measured" in robustness_note(str(tmp_path / "run" / "checkpoints" / "best.ckpt"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("vit_mnist.robustness", *args, *EVAL, cwd=ROOT)


@pytest.mark.parametrize(("args", "message"), [
    (["only=[fgo]"], "names no corruption"),
    (["severity=7"], "is not a severity"),
    (["num_images=0"], "must be a positive whole number"),
    (["pen_photos_images=0"], "must be a positive whole number"),
    (["names=[a,b]"], "has 2 names for 1 checkpoints"),
])
def test_cli_bad_input_gives_one_paragraph_and_no_folder(args: list[str], message: str, trained: dict,
                                                         data_dir: Path, tmp_path: Path, run_in_process) -> None:
    run_dir = tmp_path / "rob"
    result = run_in_process("vit_mnist.robustness", f"ckpt_path={trained['best_checkpoint']}",
                            f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", *args, *EVAL, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()


def test_cli_bad_checkpoint(data_dir: Path, tmp_path: Path, run_in_process) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    for args, message in (([f"ckpt_path={bad}"], "is not a readable vit-mnist checkpoint"),
                          ([f"ckpt_path={tmp_path}/missing.ckpt"], "does not exist"),
                          ([], "No checkpoint to test")):
        run_dir = tmp_path / "rob"
        result = run_in_process("vit_mnist.robustness", *args, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
                                *EVAL, cwd=tmp_path)
        assert result.returncode == 2 and message in " ".join(result.stderr.split()), result.stderr
        assert not run_dir.exists()


@pytest.mark.slow
def test_real_mnist_corruptions_follow_the_paper() -> None:
    """On real test digits: each corruption at its severity keeps the format and changes the images; the ones
    MNIST-C defines exactly come out exactly so."""
    data_dir = os.environ.get("VIT_MNIST_DATA_DIR", str(ROOT / "data"))
    if not (Path(data_dir) / "MNIST" / "raw").is_dir():
        pytest.skip("the real MNIST files are not there (VIT_MNIST_DATA_DIR)")
    images, _ = load_split("mnist", data_dir, "test", download=False)
    images = images[:500]
    for name, entry in TABLE.items():
        out = corrupt(images, entry["kind"], entry["levels"][entry["severity"] - 1], name=name)
        assert out.dtype == torch.uint8 and out.shape == images.shape
        assert rms(out, images) > 1.0, name
    # stripe: the 7 outer columns on each side inverted, the rest untouched
    stripe = corrupt(images, "stripe", 7)
    assert torch.equal(stripe[..., :7], 255 - images[..., :7]) and torch.equal(stripe[..., 21:], 255 - images[..., 21:])
    assert torch.equal(stripe[..., 7:21], images[..., 7:21])
    # brightness at MNIST-C's severity lifts the black background to grey 0.5
    bright = corrupt(images, "brightness", 0.5)
    assert int(np.median(bright.numpy())) == 128
    # Canny edges alone are a binary image
    assert set(corrupt(images, "canny_edges", 1.0).unique().tolist()) <= {0, 255}
