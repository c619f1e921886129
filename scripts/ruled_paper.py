"""Print how a checkpoint reads MNIST's test digits photographed on plain, ruled and squared paper and in a form's box,
with and without the preprocessing step that takes the rulings out (a benchmark, not a test).

    python scripts/ruled_paper.py <run>/checkpoints/best.ckpt [data_dir] [num_digits]

Each digit is enlarged to a 400x400 photo: dark blue ink on off-white paper, pale blue rulings every 30-45 pixels
(or a grey 20-pixel grid, or a black box around it), tilted by up to 1 degree, blurred, with sensor noise, saved as
JPEG (seeded); then read as `predict` reads a file.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

import vit_mnist.data.preprocess as preprocess
from vit_mnist import load_model
from vit_mnist.data import load_split

PAPERS = ("plain", "ruled", "squared", "box")
SIZE = 400


def photo(digit: np.ndarray, paper: str, rng: np.random.Generator) -> bytes:
    """JPEG bytes of a 28x28 MNIST digit written on `paper`."""
    page = Image.new("RGB", (SIZE, SIZE), (246, 244, 236))
    draw = ImageDraw.Draw(page)
    if paper == "ruled":
        spacing = int(rng.integers(30, 46))
        for y in range(int(rng.integers(5, spacing)), SIZE, spacing):
            draw.line([(0, y), (SIZE, y)], fill=(140, 170, 220), width=int(rng.integers(1, 3)))
    elif paper == "squared":
        offset = int(rng.integers(3, 20))
        for t in range(offset, SIZE, 20):
            draw.line([(t, 0), (t, SIZE)], fill=(175, 185, 190), width=1)
            draw.line([(0, t), (SIZE, t)], fill=(175, 185, 190), width=1)
    elif paper == "box":
        margin = int(rng.integers(10, 40))
        draw.rectangle([margin, margin, SIZE - margin, SIZE - margin], outline=(30, 30, 30), width=3)
    side = int(rng.integers(200, 260))
    ink = Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR)
    left, top = (int(v) for v in rng.integers(80, SIZE - side - 60, size=2))
    page.paste((25, 35, 120), (left, top), ink)  # the digit's grey levels as the pen's coverage
    page = page.rotate(float(rng.uniform(-1, 1)), resample=Image.Resampling.BICUBIC, fillcolor=(246, 244, 236))
    pixels = np.asarray(page.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float64)
    pixels = pixels + rng.normal(0, 4, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def main(ckpt: str, data_dir: str, count: int) -> None:
    model = load_model(ckpt)
    images, labels = load_split(model.dataset, data_dir, "test", download=False)
    images, labels = images[:count, 0].numpy(), labels[:count].numpy()
    with_rulings_step = preprocess.remove_rulings
    print("| paper | rulings step | accuracy | confident | unsure | out_of_domain |\n|---|---|---:|---:|---:|---:|")
    for paper in PAPERS:
        rng = np.random.default_rng(PAPERS.index(paper))
        photos = [photo(d, paper, rng) for d in images]
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
