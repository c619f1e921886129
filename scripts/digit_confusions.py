"""Print which digits checkpoints misread on MNIST's test set and on the other writers' digits (a benchmark, not a
test): test accuracy, MNIST 7s read as 1 and 1s read as 7, and accuracy per digit on the UCI set.

    python scripts/digit_confusions.py <run>/checkpoints/best.ckpt [<another run's>...]   (data: $VIT_MNIST_DATA_DIR)

Answers come from `load_model(...).predict` (the checkpoint's own test-time shifts, as a user gets them). Made for
the writing styles (`data.augment.styles`: flagged 1s and crossed 7s), whose risk is a 7 read as a flagged 1.
"""

from __future__ import annotations

import os
import sys

import torch

from vit_mnist import load_model
from vit_mnist.data import load_split
from vit_mnist.data.other_writers import load_other_writers


def main(ckpts: list[str], data_dir: str) -> None:
    images, labels = load_split("mnist", data_dir, "test", download=False)
    uci_images, uci_labels = load_other_writers()
    print("| checkpoint | test acc | 7s read as 1 | 1s read as 7 | other writers | " +
          " | ".join(f"UCI {d}s" for d in range(10)) + " |\n|---|---:|---:|---:|---:|" + "---:|" * 10)
    for ckpt in ckpts:
        model = load_model(ckpt)
        preds = torch.tensor(model.predict(images, batch_size=500).labels)
        uci = torch.tensor(model.predict(uci_images, batch_size=500).labels)
        per_digit = [100 * float((uci[uci_labels == d] == d).float().mean()) for d in range(10)]
        print(f"| {ckpt} | {100 * float((preds == labels).float().mean()):.2f}% | "
              f"{int(((labels == 7) & (preds == 1)).sum())} | {int(((labels == 1) & (preds == 7)).sum())} | "
              f"{100 * float((uci == uci_labels).float().mean()):.2f}% | " + " | ".join(f"{v:.1f}" for v in per_digit)
              + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:], os.environ.get("VIT_MNIST_DATA_DIR", "data"))
