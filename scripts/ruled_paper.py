"""Print how a checkpoint reads MNIST's test digits photographed on plain, ruled and squared paper and in a form's box,
with and without the preprocessing step that takes the rulings out (a benchmark, not a test).

    python scripts/ruled_paper.py <run>/checkpoints/best.ckpt [data_dir] [num_digits]

Each digit is written into a 400x400 photo (`vit_mnist.data.paper_photos`: dark blue ink on off-white paper, pale
blue rulings every 30-45 pixels, a grey 20-pixel grid or a black box around it, tilted by up to 1 degree, blurred,
with sensor noise, JPEG; seeded), then read as `predict` reads a file.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

import vit_mnist.data.preprocess as preprocess
from vit_mnist import load_model
from vit_mnist.data import load_split
from vit_mnist.data.paper_photos import PAPERS, paper_photo


def main(ckpt: str, data_dir: str, count: int) -> None:
    model = load_model(ckpt)
    images, labels = load_split(model.dataset, data_dir, "test", download=False)
    images, labels = images[:count, 0].numpy(), labels[:count].numpy()
    with_rulings_step = preprocess.remove_rulings
    print("| paper | rulings step | accuracy | confident | unsure | out_of_domain |\n|---|---|---:|---:|---:|---:|")
    for paper in PAPERS:
        rng = np.random.default_rng(PAPERS.index(paper))
        photos = [paper_photo(d, paper, rng) for d in images]
        for step in ("off", "on"):
            preprocess.remove_rulings = with_rulings_step if step == "on" else (lambda ink, threshold: ink)
            laid = np.stack([preprocess.to_mnist_layout(preprocess.load_image(p), "full") for p in photos])
            answers = model.predict(torch.from_numpy(laid)[:, None], batch_size=500)
            accuracy = float(np.mean(np.asarray(answers.labels) == labels))
            shares = [answers.verdicts.count(v) / len(labels) for v in ("confident", "unsure", "out_of_domain")]
            print(f"| {paper} | {step} | {100 * accuracy:.1f}% | " + " | ".join(f"{100 * s:.1f}%" for s in shares)
                  + " |")
    preprocess.remove_rulings = with_rulings_step


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIT_MNIST_DATA_DIR", "data"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 500)
