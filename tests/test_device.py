"""Device correctness without a GPU: every path that runs on the accelerator makes its tensors on its data's device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from tests.conftest import TINY, compose_config
from tests.device_check import DeviceCheck
from vit_mnist.data.augment import AugmentConfig, augment
from vit_mnist.data.image_ops import gaussian_blur, gaussian_kernel1d
from vit_mnist.inference.export import export
from vit_mnist.inference.predictor import Predictor
from vit_mnist.robustness_suite import benchmark
from vit_mnist.robustness_suite.scoring import Scorer
from vit_mnist.training.fit import train

# every augmentation of conf/data/, each switched on
ALL_AUGMENTATIONS = ["data.augment.rotation=15", "data.augment.hflip=true", "data.augment.aspect=1.0",
                     "data.augment.elastic=20", "data.augment.stroke=1.0", "data.augment.blur=1.0",
                     "data.augment.min_resolution=10", "data.augment.noise=0.1", "data.augment.erasing=0.5",
                     "data.augment.handwriting_p=0.7"]


def test_the_blur_kernel_is_made_on_the_device_of_its_sigmas() -> None:
    # a GPU run's sigmas live on the GPU; the meta device stands in for it (the old code raised "Tensor on device
    # meta is not on the expected device cpu!")
    kernel = gaussian_kernel1d(torch.rand(4, device="meta"), radius=4)
    assert kernel.device.type == "meta" and kernel.shape == (4, 9)


def test_the_check_finds_a_tensor_made_on_the_default_device() -> None:
    def leaky(x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[-1])  # the bug the check exists for, written here on purpose

    leaky.__code__ = leaky.__code__.replace(co_filename=gaussian_blur.__code__.co_filename)  # as if vit_mnist code
    with DeviceCheck() as check:
        leaky(torch.zeros(2, 3))
        torch.arange(3)  # this test's own tensors are not vit_mnist's: not recorded
    assert len(check.problems) == 1 and "torch.arange without device=" in check.problems[0]


def test_the_augmentation_makes_every_tensor_on_its_batch_s_device() -> None:
    cfg = AugmentConfig(rotation=15, hflip=True, aspect=1.0, elastic=20, stroke=1.0, blur=1.0, min_resolution=10,
                        noise=0.1, erasing=0.5, handwriting_p=0.7)
    images = torch.rand(16, 1, 28, 28)
    with DeviceCheck() as check:
        augmented = augment(images, cfg, torch.Generator().manual_seed(0))
        gaussian_blur(images, 0.8)  # one sigma for the batch, as the corruptions blur
    assert check.problems == [] and augmented.shape == images.shape


def test_training_testing_and_deployment_make_their_tensors_on_the_data_s_device(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One tiny run with everything that runs on the accelerator switched on: a CNN teacher, a ViT student with
    shifted patches, locality self-attention and sequence pooling, every augmentation, test-time shifts,
    calibration, the detector and the robustness benchmark; then the predictor on its checkpoint. Every factory
    call of vit_mnist's code inside names its device.

    The trainer's device is "cpu:0" here, a name that differs from the "cpu" that Lightning's teardown moves the
    module to after the test: the after-fit benchmark must score on the trainer's device, not the module's."""
    monkeypatch.setattr(SingleDeviceStrategy, "root_device", property(lambda self: torch.device("cpu", 0)))
    scored_on: list[torch.device] = []
    monkeypatch.setattr(benchmark, "Scorer", type("RecordingScorer", (Scorer,), {
        "__init__": lambda self, module, *args: (scored_on.append(args[3]), Scorer.__init__(self, module, *args))[1]}))
    limits = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "logger=csv"]
    with DeviceCheck() as check:
        teacher = train(compose_config([*[o for o in TINY if not o.startswith("model.")], f"paths.data_dir={data_dir}",
                                        "model=cnn", "model.widths=[8,16]", "test=false", *limits], tmp_path / "cnn"))
        metrics = train(compose_config(
            [*TINY, f"paths.data_dir={data_dir}", "model.patch_size=4", "model.tokenizer=spt", "model.attention=lsa",
             "model.pool=seq", f"distill.teacher={teacher['best_checkpoint']}", "tta=true", "robustness=true",
             "robustness_images=20", *ALL_AUGMENTATIONS, *limits], tmp_path / "vit"))
        predictor = Predictor.from_checkpoint(metrics["best_checkpoint"])
        drawn = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
        answers = predictor.answer(np.stack([predictor.prepare(image)[0] for image in drawn]))
    assert check.problems == [], "\n".join(check.problems)
    assert metrics["test/acc"] >= 0 and "test/mca" in metrics and len(answers.verdicts) == 3
    assert scored_on == [torch.device("cpu", 0)]


def test_the_export_makes_its_check_inputs_on_the_cpu(data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config([*TINY, f"paths.data_dir={data_dir}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                          "logger=csv", "test=false", "verdicts=false"], tmp_path / "run")
    ckpt = train(cfg)["best_checkpoint"]
    with DeviceCheck() as check:
        export(ckpt, "torchscript", tmp_path / "model.pt")
    assert check.problems == [], "\n".join(check.problems)

