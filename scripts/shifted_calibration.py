"""Print a checkpoint's calibration error under shift for temperatures fitted on other digits (a benchmark, not a test).

    python scripts/shifted_calibration.py <run>/checkpoints/best.ckpt [data_dir]

The run's temperature is fitted on its validation digits as they are (or, for a run with calibrate_on=noisy, also on
half of them again under noise). The other rows fit it on the first 5,000 of them together with the same drawn as
other writers' (vit_mnist.data.writer_shift, at full and at a quarter strength), on the shifted ones alone, on them and
half of them again under Gaussian noise of std evenly from 0 up to 0.5, 0.7 or 1 (calibrate_on=noisy is 1), or fix it
by hand (from sharp to none); each is scored by the expected calibration error
(the robustness report's bins) on the first 2,000 test digits, the mean over the 21 corruptions of
conf/corruptions/ and the 1,797 other writers' digits. Last, per corruption at the run's temperature: accuracy and
mean top-1 probability (under-confident where the second is the lower).
"""

from __future__ import annotations

import os
import sys

import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import multiclass_calibration_error

from vit_mnist.data import load_split
from vit_mnist.data.corruptions import corrupt
from vit_mnist.data.digit_sets import load_digit_set
from vit_mnist.data.writer_shift import writer_shifted
from vit_mnist.evaluation.checkpoint_data import checkpoint_datamodule
from vit_mnist.models.outputs import run_network
from vit_mnist.ood.detector import THRESHOLD_IMAGES
from vit_mnist.reports.samples import CALIBRATION_BINS
from vit_mnist.robustness_suite.suite import build_suite
from vit_mnist.training.calibration import fit_temperature, fit_temperature_on
from vit_mnist.training.checkpoints import load_module, read_checkpoint, trained_dataset

BY_HAND = (0.3, 0.5, 0.6, 1.0, 1.2)  # how far a temperature alone can go, either way
NOISE_STDS = (0.5, 0.7, 1.0)  # the strongest noise of calibrate_on=noisy's copies (it takes 1)


def main(ckpt_path: str, data_dir: str) -> None:
    ckpt = read_checkpoint(ckpt_path)
    module, dataset = load_module(ckpt_path), trained_dataset(ckpt)
    mean, std = float(module.hparams["normalize"]["mean"]), float(module.hparams["normalize"]["std"])

    def logits(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out, _ = run_network(module.net, images, mean, std, tta=bool(module.hparams.get("tta")), batch_size=200)
        return out.double()

    datamodule = checkpoint_datamodule(ckpt, dataset, {"data_dir": data_dir, "download": False})
    datamodule.setup("fit")
    val, val_labels = datamodule.val_set.images[:THRESHOLD_IMAGES], datamodule.val_set.labels[:THRESHOLD_IMAGES]
    test, test_labels = load_split(dataset, data_dir, "test", download=False)
    test, test_labels = test[:2000], test_labels[:2000]
    clean_val, full, quarter = logits(val), logits(writer_shifted(val)), logits(writer_shifted(val, strength=0.25))
    scored = {"clean": (logits(test), test_labels)}
    other, other_labels = load_digit_set("other_writers", test, test_labels, 0)
    scored["other writers"] = (logits(other), other_labels)
    corrupted = {spec.name: logits(corrupt(test, spec.kind, spec.level, seed=0, name=spec.name))
                 for spec in build_suite(OmegaConf.load("conf/corruptions/default.yaml"))}

    def ece(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
        return float(multiclass_calibration_error((z / temperature).softmax(-1), labels, z.shape[1],
                                                  n_bins=CALIBRATION_BINS))

    both = torch.cat([val_labels, val_labels])
    temperatures = {"the run's (as its checkpoint stores it)": float(module.temperature),
                    "clean + fully shifted validation digits": fit_temperature(torch.cat([clean_val, full]), both),
                    "clean + quarter-shifted validation digits": fit_temperature(torch.cat([clean_val, quarter]), both),
                    "fully shifted validation digits alone": fit_temperature(full, val_labels),
                    # as the after-fit step fits calibrate_on=noisy, at other strengths too
                    **{f"clean + half again under noise of std 0-{m:g}":
                       fit_temperature_on("noisy", clean_val, val_labels, val, logits, max_std=m) for m in NOISE_STDS},
                    **{f"by hand {t:g}": t for t in BY_HAND}}
    print("| temperature fitted on | T | ECE clean | ECE corrupted (mean) | ECE other writers |\n"
          "|---|---:|---:|---:|---:|")
    for name, t in temperatures.items():
        on_corrupted = sum(ece(z, test_labels, t) for z in corrupted.values()) / len(corrupted)
        print(f"| {name} | {t:.4f} | {ece(*scored['clean'], t):.4f} | {on_corrupted:.4f} | "
              f"{ece(*scored['other writers'], t):.4f} |")
    t = float(module.temperature)
    print("\n| corruption (the run's temperature) | accuracy | mean top-1 probability | ECE |\n|---|---:|---:|---:|")
    for name, z in corrupted.items():
        top1, preds = (z / t).softmax(-1).max(-1)
        print(f"| {name} | {100 * float((preds == test_labels).double().mean()):.1f}% | {float(top1.mean()):.3f} | "
              f"{ece(z, test_labels, t):.3f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIT_MNIST_DATA_DIR", "data"))
