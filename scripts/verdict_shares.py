"""Print the share of each verdict a checkpoint gives its test digits, other writers' digits (a model of digits) and
each non-digit set, and how many of the confident answers on the digits are right (a benchmark, not a test).

    python scripts/verdict_shares.py <run>/checkpoints/best.ckpt [data_dir]
"""

from __future__ import annotations

import collections
import os
import sys

from vit_mnist import load_model
from vit_mnist.data import load_split
from vit_mnist.data.non_digits import make_non_digits, non_digit_sets_for
from vit_mnist.data.other_writers import load_other_writers
from vit_mnist.data.sources import is_handwritten
from vit_mnist.ood.detector import VERDICTS


def main(ckpt: str, data_dir: str) -> None:
    model = load_model(ckpt)
    dataset = model.dataset
    images, labels = load_split(dataset, data_dir, "test", download=False)
    sets = {"test images": (images[:2000], labels[:2000])}
    if is_handwritten(dataset):
        sets["other writers"] = load_other_writers()
    sets.update({name: (make_non_digits(name, data_dir=data_dir), None) for name in non_digit_sets_for(dataset)})
    print(f"| images | n | {' | '.join(VERDICTS)} | right when confident |\n|---|---:|" + "---:|" * (len(VERDICTS) + 1))
    for name, (images, labels) in sets.items():
        answers = model.predict(images, batch_size=500)
        counts = collections.Counter(answers.verdicts)
        shares = " | ".join(f"{100 * counts[v] / len(answers.verdicts):.1f}%" for v in VERDICTS)
        right = "-"
        if labels is not None and counts[VERDICTS[0]]:
            sure = [i for i, v in enumerate(answers.verdicts) if v == VERDICTS[0]]
            hits = sum(int(answers.labels[i] == int(labels[i])) for i in sure)
            right = f"{100 * hits / len(sure):.2f}% ({len(sure) - hits} wrong)"
        print(f"| {name} | {len(answers.verdicts)} | {shares} | {right} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIT_MNIST_DATA_DIR", "data"))
