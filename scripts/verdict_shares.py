"""Print the share of each verdict a checkpoint gives its test digits, other writers' digits (a model of digits) and
each non-digit set, how many of the confident answers on the digits are right, and which images the wrong ones are
(a benchmark, not a test; indexes into the first 2,000 test digits and into `load_other_writers()`).

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
    wrong_lines = []
    for name, (images, labels) in sets.items():
        answers = model.predict(images, batch_size=500)
        counts = collections.Counter(answers.verdicts)
        shares = " | ".join(f"{100 * counts[v] / len(answers.verdicts):.1f}%" for v in VERDICTS)
        right = "-"
        if labels is not None and counts[VERDICTS[0]]:
            sure = [i for i, v in enumerate(answers.verdicts) if v == VERDICTS[0]]
            wrong = [i for i in sure if answers.labels[i] != int(labels[i])]
            right = f"{100 * (len(sure) - len(wrong)) / len(sure):.2f}% ({len(wrong)} wrong)"
            if wrong:  # which images: a handful, worth looking at (is the label or the reading at fault?)
                wrong_lines.append(f"{name}, confident and wrong (image: label read as answer, top-1): " + ", ".join(
                    f"#{i}: {int(labels[i])} as {answers.labels[i]} ({answers.probabilities[i].max():.5f})"
                    for i in wrong))
        print(f"| {name} | {len(answers.verdicts)} | {shares} | {right} |")
    print("\n".join(["", *wrong_lines]) if wrong_lines else "")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIT_MNIST_DATA_DIR", "data"))
