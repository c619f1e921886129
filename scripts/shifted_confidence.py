"""Print how often a checkpoint's `confident` answers are right, with the unsure threshold fixed on clean or on
writer-shifted validation digits (a benchmark, not a test).

    python scripts/shifted_confidence.py <run>/checkpoints/best.ckpt [data_dir]

The run's stored rule fixes the unsure threshold on the first 5,000 validation digits as they are. The other rules
fix it on the same digits drawn through the handwriting variation (experiment=handwriting's ranges, on every image,
seeded): a shift like another writer's, never an image of the other writers' set. Each rule is then scored on the
first 2,000 test digits, the 1,797 other writers' digits and 1,000 pen photos: the share answered above the
threshold, and how many of those are right. Last, the shift at milder strengths (every range scaled down). The
out-of-domain threshold is left out (it is the same in every rule).
"""

from __future__ import annotations

import os
import sys

import torch

from vit_mnist.data import load_split
from vit_mnist.data.digit_sets import load_digit_set
from vit_mnist.data.writer_shift import writer_shifted
from vit_mnist.evaluation.checkpoint_data import checkpoint_datamodule
from vit_mnist.models.outputs import run_network
from vit_mnist.ood.detector import THRESHOLD_IMAGES
from vit_mnist.ood.thresholds import CONFIDENT_PRECISION, confidence_threshold
from vit_mnist.training.checkpoints import load_module, read_checkpoint, trained_dataset

MILDER = (0.25, 0.5, 0.75)  # writer-shift strengths (vit_mnist.data.writer_shift.writer_shift) also measured


def main(ckpt_path: str, data_dir: str) -> None:
    ckpt = read_checkpoint(ckpt_path)
    module, dataset = load_module(ckpt_path), trained_dataset(ckpt)
    temperature = float(module.temperature)
    mean, std = float(module.hparams["normalize"]["mean"]), float(module.hparams["normalize"]["std"])

    def answers(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = run_network(module.net, images, mean, std, tta=bool(module.hparams.get("tta")), batch_size=100)
        top1, preds = (logits.double() / temperature).softmax(dim=-1).max(dim=-1)
        return top1, preds == labels

    datamodule = checkpoint_datamodule(ckpt, dataset, {"data_dir": data_dir, "download": False})
    datamodule.setup("fit")
    val, val_labels = datamodule.val_set.images[:THRESHOLD_IMAGES], datamodule.val_set.labels[:THRESHOLD_IMAGES]
    test, test_labels = load_split(dataset, data_dir, "test", download=False)
    scored = {"clean test": answers(test[:2000], test_labels[:2000]),
              "other writers": answers(*load_digit_set("other_writers", test, test_labels, 0)),
              "pen photos": answers(*load_digit_set("pen_photos", test, test_labels, 0))}
    clean_val, shifted_val = answers(val, val_labels), answers(writer_shifted(val), val_labels)
    print(f"temperature {temperature:.4f}; validation accuracy clean {100 * float(clean_val[1].double().mean()):.2f}%,"
          f" writer-shifted {100 * float(shifted_val[1].double().mean()):.2f}%\n")
    rules = {f"clean validation, {100 * CONFIDENT_PRECISION:g}% right (stored rule)": confidence_threshold(*clean_val)}
    for precision in (CONFIDENT_PRECISION, 0.995, 0.99):
        rules[f"writer-shifted validation, {100 * precision:g}% right"] = confidence_threshold(*shifted_val, precision)
    both = tuple(torch.cat(pair) for pair in zip(clean_val, shifted_val))
    rules[f"both, {100 * CONFIDENT_PRECISION:g}% right"] = confidence_threshold(*both)
    for strength in MILDER:  # for a model trained without the handwriting augmentation
        milder = answers(writer_shifted(val, strength=strength), val_labels)
        rules[f"writer shift at strength {strength:g} ({100 * float(milder[1].double().mean()):.1f}% read), "
              f"{100 * CONFIDENT_PRECISION:g}% right"] = confidence_threshold(*milder)
    print("| unsure threshold fixed on | threshold | " + " | ".join(f"{n}: confident / right" for n in scored)
          + " |\n|---|---:|" + "---:|" * len(scored))
    for name, threshold in rules.items():
        cells = []
        for top1, correct in scored.values():
            sure = top1 >= threshold
            right = float(correct[sure].double().mean()) if sure.any() else float("nan")
            cells.append(f"{100 * float(sure.double().mean()):.1f} / {100 * right:.2f}%")
        print(f"| {name} | {threshold:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIT_MNIST_DATA_DIR", "data"))
