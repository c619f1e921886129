"""Outlier exposure: its pool never holds a benchmark image, its loss pushes non-digits towards a uniform answer
without costing digit accuracy, the ViT, the CNN and a distilled ViT train with it, and its config's mistakes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.builders import untrained_checkpoint
from tests.conftest import CNN_TINY, TINY, compose_config, trained_run
from vit_mnist.data import image_cache
from vit_mnist.data.non_digits import (
    load_non_digit_sets,
    make_non_digits,
    non_digit_sets_for,
)
from vit_mnist.data.outliers import OutlierPool
from vit_mnist.errors import UserError
from vit_mnist.training.checkpoints import module_from_checkpoint, read_checkpoint
from vit_mnist.training.checks import validate
from vit_mnist.training.distill import distillation_loss
from vit_mnist.training.fit import build
from vit_mnist.training.outlier_exposure import uniform_cross_entropy

OE = ("outlier_exposure.weight=0.5", "outlier_exposure.count=40", "outlier_exposure.batch_size=16")


def keys(images: torch.Tensor) -> set[bytes]:
    return {bytes(image.numpy()) for image in images}


def test_the_uniform_answer_is_the_lowest_loss() -> None:
    flat = torch.zeros(3, 10)
    assert uniform_cross_entropy(flat).item() == pytest.approx(math.log(10))
    sure = torch.tensor([[8.0] + [0.0] * 9])
    assert uniform_cross_entropy(sure).item() > math.log(10) + 0.5
    logits = torch.randn(4, 10, requires_grad=True)  # its gradient makes every answer less sure
    uniform_cross_entropy(logits).backward()
    with torch.no_grad():
        assert (F.softmax(logits - 0.5 * logits.grad, -1).amax(-1) < F.softmax(logits, -1).amax(-1)).all()


def test_training_never_sees_a_benchmark_image(make_cfg, data_dir: Path) -> None:
    datamodule, module = build(make_cfg(*OE))
    datamodule.setup("fit")
    pool = datamodule.outliers.images
    sets = non_digit_sets_for("mnist")
    assert datamodule.outliers.names == sets and module.hparams.outlier_exposure["sets"] == sets  # fashion's files too
    # exactly the training streams (and Fashion-MNIST's training file), 40 of each set
    streams = [make_non_digits(name, 40, 0, "training", str(data_dir)) for name in sets]
    assert torch.equal(pool, torch.cat(streams))
    benchmark, notes = load_non_digit_sets("mnist", data_dir)  # every set as the benchmark scores it, in full
    assert not notes and list(benchmark) == sets
    assert not keys(pool) & keys(torch.cat(list(benchmark.values())))
    for name, stream in zip(sets, streams):  # the streams differ: the benchmark's first images are other images
        assert not torch.equal(stream, benchmark[name][:40])
    # a training batch's outliers come from the pool, transformed as the digits are; evaluation batches get none
    drawn = datamodule.outliers.draw(torch.device("cpu"))
    assert drawn.shape == (16, 1, 28, 28) and keys(drawn) <= keys(pool)
    images, labels = datamodule.on_after_batch_transfer((datamodule.val_set.images[:4], datamodule.val_set.labels[:4]), 0)
    assert images.dtype == torch.float32 and len(labels) == 4


def test_outliers_are_pushed_towards_uniform_and_digits_stay_right(tmp_path_factory, data_dir: Path) -> None:
    # the same tiny run (same seed, same digits), without and with outlier exposure on constructed data
    runs = {name: trained_run(tmp_path_factory, data_dir, "trainer.max_epochs=2", "logger=csv", *extra)[1]
            for name, extra in (("plain", ()), ("oe", OE))}
    unseen = torch.cat([make_non_digits(name, 60) for name in ("letters", "scribbles", "shapes")])  # the benchmark's
    top = {}
    for name, metrics in runs.items():
        ckpt = metrics["best_checkpoint"]
        module = module_from_checkpoint(read_checkpoint(ckpt), ckpt).eval()
        x = (unseen.float() / 255 - module.hparams.normalize["mean"]) / module.hparams.normalize["std"]
        with torch.no_grad():
            top[name] = F.softmax(module(x), -1).amax(-1).mean().item()
    assert top["oe"] < top["plain"] - 0.2 and top["oe"] < 0.5, top  # far from sure about what it never saw
    # the digits as right as without: within 6 of the 200 test images (a 2-epoch run's own noise)
    assert runs["oe"]["test/acc"] >= runs["plain"]["test/acc"] - 0.03, {k: m["test/acc"] for k, m in runs.items()}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("kind", ["vit", "cnn", "distilled"])
def test_the_loss_is_the_digits_loss_plus_the_weighted_uniform_term(kind: str, data_dir: Path, tmp_path: Path) -> None:
    base = CNN_TINY if kind == "cnn" else TINY
    extra = [f"distill.teacher={untrained_checkpoint(tmp_path / 't.ckpt', 'mnist')}"] if kind == "distilled" else []
    cfg = compose_config([*base, f"paths.data_dir={data_dir}", "outlier_exposure.weight=0.3", *extra], tmp_path / "r")
    _, module = build(cfg)
    module.eval()  # no dropout: the same logits twice
    seen: list[int] = []
    if module._teacher:
        module._teacher[0].register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    g = torch.Generator().manual_seed(0)
    images, outliers = torch.randn(6, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    labels = torch.arange(6) % 10
    loss = module.training_step((images, labels, outliers), 0)
    with torch.no_grad():
        inputs = torch.cat([images, outliers])
        if kind == "distilled":
            cls, dist = module.net.forward_heads(inputs)
            teacher = module._teacher[0](images)
            digits = distillation_loss(cls[:6], dist[:6], labels, teacher, "hard", 0.5)
            served = (cls + dist) / 2
        else:
            served = module(inputs)
            digits = F.cross_entropy(served[:6], labels)
    assert loss.item() == pytest.approx(digits.item() + 0.3 * uniform_cross_entropy(served[6:]).item(), rel=1e-5)
    assert (module.train_acc.tp + module.train_acc.fn).sum().item() == 6  # the outliers have no label and no place in the accuracy
    assert seen[:1] == ([6] if kind == "distilled" else [])  # the teacher sees the digits only


@pytest.mark.parametrize(("override", "message"), [
    ("outlier_exposure.weight=-1", "outlier_exposure.weight=-1 must be a number in"),
    ("outlier_exposure.weight=strong", "outlier_exposure.weight='strong' must be a number"),
    ("outlier_exposure.count=0", "outlier_exposure.count=0 must be a positive whole number"),
    ("outlier_exposure.batch_size=2.5", "outlier_exposure.batch_size=2.5 must be a positive whole number"),
    ("outlier_exposure.seed=one", "outlier_exposure.seed='one' must be a whole number"),
    ("outlier_exposure.sets=[letterz]", "outlier_exposure.sets=\\['letterz'\\] must be a non-empty list"),
    ("outlier_exposure.sets=[]", "must be a non-empty list"),
    ("outlier_exposure.sets=[letters,digits]", "outside data=mnist's domain"),
    ("+outlier_exposure.strength=1", "Its keys are weight, sets, count, batch_size, seed and cache_dir"),
])
def test_config_mistakes_are_one_paragraph_naming_the_key(make_cfg, override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate(make_cfg("outlier_exposure.weight=0.5", override))


def test_a_mistake_is_refused_before_any_work(run_in_process, data_dir: Path, tmp_path: Path) -> None:
    result = run_in_process("vit_mnist.train", *TINY, f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}",
                            "outlier_exposure.weight=0.5", "outlier_exposure.sets=[digits]", cwd=tmp_path)
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and said.startswith("error: outlier_exposure.sets=['digits']"), result.stderr
    assert "Traceback" not in said


def test_a_set_whose_files_are_missing_is_left_out(tmp_path: Path) -> None:
    pool = OutlierPool("mnist", None, 5, 4)
    images = pool.build(str(tmp_path))  # no Fashion-MNIST files there
    assert pool.names == ["letters", "scribbles", "shapes", "noise"] and len(images) == 20
    with pytest.raises(UserError, match="Outlier exposure has no images"):
        OutlierPool("mnist", ["fashion"], 5, 4).build(str(tmp_path))


def test_the_pool_is_made_once_then_read_from_the_cache(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    made = []
    real = image_cache.make_non_digits
    monkeypatch.setattr(image_cache, "make_non_digits", lambda *a: made.append(a[0]) or real(*a))
    first = OutlierPool("mnist", None, 6, 4, cache_dir=str(tmp_path / "cache")).build(str(data_dir))
    assert sorted(made) == sorted(["letters", "scribbles", "shapes", "noise", "fashion"])
    again = OutlierPool("mnist", None, 6, 4, cache_dir=str(tmp_path / "cache")).build(str(data_dir))
    assert torch.equal(first, again) and len(made) == 5  # read back, none made again
    assert torch.equal(first, OutlierPool("mnist", None, 6, 4).build(str(data_dir)))  # as made without a cache
    assert len(made) == 10
    OutlierPool("mnist", ["letters"], 7, 4, cache_dir=str(tmp_path / "cache")).build(str(data_dir))
    assert made[10:] == ["letters"]  # other arguments: made
    monkeypatch.setattr(image_cache, "code_stamp", lambda: "another version of the drawing code")
    OutlierPool("mnist", ["letters", "fashion"], 6, 4, cache_dir=str(tmp_path / "cache")).build(str(data_dir))
    assert made[11:] == ["letters", "fashion"]  # other code: made again


def test_the_cache_folder_stays_out_of_the_checkpoint(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("outlier_exposure.weight=0.5", f"paths.cache_dir={tmp_path / 'c'}")
    datamodule, module = build(cfg)
    assert datamodule.outliers.cache_dir == str(tmp_path / "c")
    assert "cache_dir" not in module.hparams.outlier_exposure  # a machine's folder, not a property of the model
