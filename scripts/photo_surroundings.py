"""Print how a checkpoint reads MNIST's test digits photographed with the table beside the page or a scanner's dark
margin along the photo's edge, with and without the preprocessing step that takes them out (a benchmark, not a test).

    python scripts/photo_surroundings.py <run>/checkpoints/best.ckpt [data_dir] [num_digits]

Each digit is written into a 400x400 photo of plain paper (`vit_mnist.data.paper_photos`: dark blue ink, tilted by up
to 1 degree, blurred, sensor noise, JPEG; seeded); then a dark wooden table (grey level 45-75, 25-60 pixels deep)
covers one side of it, or two sides that meet at a corner, or a scanner lid's near-black margin (10-30 pixels) one
side. "off" reads them as the code before the step did (`vit_mnist.data.surroundings` skipped).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

import vit_mnist.data.preprocess as preprocess
from vit_mnist import load_model
from vit_mnist.data import load_split
from vit_mnist.data.paper_photos import paper_photo

CONDITIONS = ("plain", "table, one side", "table, two sides", "scanner margin")
SIDES = ("left", "right", "top", "bottom")
CORNERS = (("left", "top"), ("top", "right"), ("right", "bottom"), ("bottom", "left"))


def surrounded(photo: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """The grey photo with `condition`'s surroundings along its edge."""
    photo = photo.copy()
    if condition == "plain":
        return photo
    if condition == "scanner margin":
        sides, level, depth = [SIDES[rng.integers(4)]], rng.uniform(5, 20), int(rng.integers(10, 31))
    else:
        sides = [SIDES[rng.integers(4)]] if condition == "table, one side" else list(CORNERS[rng.integers(4)])
        level, depth = rng.uniform(45, 75), int(rng.integers(25, 61))
    for side in sides:
        where = {"left": np.s_[:, :depth], "right": np.s_[:, -depth:], "top": np.s_[:depth, :],
                 "bottom": np.s_[-depth:, :]}[side]
        photo[where] = level + rng.normal(0.0, 4.0, photo[where].shape)  # the table's grain, the sensor's noise
    return np.clip(photo, 0, 255)


def main(ckpt: str, data_dir: str, count: int) -> None:
    model = load_model(ckpt)
    images, labels = load_split(model.dataset, data_dir, "test", download=False)
    images, labels = images[:count, 0].numpy(), labels[:count].numpy()
    step = preprocess.remove_surroundings
    print("| photo | surroundings step | accuracy | confident | right when confident | unsure | out_of_domain |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for condition in CONDITIONS:
        rng = np.random.default_rng(CONDITIONS.index(condition))
        photos = [surrounded(preprocess.load_image(paper_photo(d, "plain", rng)), condition, rng) for d in images]
        for setting in ("off", "on"):
            preprocess.remove_surroundings = step if setting == "on" else (lambda ink, threshold: ink)
            laid = np.stack([preprocess.to_mnist_layout(p, "full") for p in photos])
            answers = model.predict(torch.from_numpy(laid)[:, None], batch_size=500)
            right = np.asarray(answers.labels) == labels
            confident = np.asarray(answers.verdicts) == "confident"
            sure = f"{100 * right[confident].mean():.1f}%" if confident.any() else "-"
            shares = [answers.verdicts.count(v) / len(labels) for v in ("confident", "unsure", "out_of_domain")]
            print(f"| {condition} | {setting} | {100 * right.mean():.1f}% | {100 * shares[0]:.1f}% | {sure} | "
                  f"{100 * shares[1]:.1f}% | {100 * shares[2]:.1f}% |")
    preprocess.remove_surroundings = step


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIT_MNIST_DATA_DIR", "data"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 500)
