"""Print the share of each verdict a checkpoint gives its test digits and each non-digit set (a benchmark, not a test).

    python scripts/verdict_shares.py <run>/checkpoints/best.ckpt [data_dir]
"""

from __future__ import annotations

import collections
import os
import sys

from vit_mnist import load_model
from vit_mnist.data import load_split
from vit_mnist.data.non_digits import make_non_digits, non_digit_sets_for
from vit_mnist.ood.detector import VERDICTS


def main(ckpt: str, data_dir: str) -> None:
    model = load_model(ckpt)
    dataset = model.dataset
    sets = {"test images": load_split(dataset, data_dir, "test", download=False)[0][:2000]}
    sets.update({name: make_non_digits(name, data_dir=data_dir) for name in non_digit_sets_for(dataset)})
    print(f"| images | n | {' | '.join(VERDICTS)} |\n|---|---:|" + "---:|" * len(VERDICTS))
    for name, images in sets.items():
        verdicts = model.predict(images, batch_size=500).verdicts
        counts = collections.Counter(verdicts)
        shares = " | ".join(f"{100 * counts[v] / len(verdicts):.1f}%" for v in VERDICTS)
        print(f"| {name} | {len(verdicts)} | {shares} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIT_MNIST_DATA_DIR", "data"))
