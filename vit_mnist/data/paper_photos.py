"""Test digits written on plain, ruled or squared paper or in a form's box, photographed: JPEG bytes for predict."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PAPERS = ("plain", "ruled", "squared", "box")
SIZE = 400  # the photo's side in pixels
PAPER = (246, 244, 236)
INK = (25, 35, 120)  # a blue ballpoint


def paper_photo(digit: np.ndarray, paper: str, rng: np.random.Generator) -> bytes:
    """A uint8 (28, 28) MNIST digit (white on black) -> JPEG bytes of a 400x400 photo of it in dark blue ink on
    `paper`: pale blue rulings every 30-45 pixels (`ruled`), a grey 20-pixel grid (`squared`) or a black box around
    it (`box`), tilted by up to 1 degree, blurred and with sensor noise."""
    if paper not in PAPERS:
        raise ValueError(f"paper={paper!r} is not one of {list(PAPERS)}")
    page = Image.new("RGB", (SIZE, SIZE), PAPER)
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
    coverage = Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR)
    left, top = (int(v) for v in rng.integers(80, SIZE - side - 60, size=2))
    page.paste(INK, (left, top), coverage)  # the digit's grey levels as the pen's coverage
    page = page.rotate(float(rng.uniform(-1, 1)), resample=Image.Resampling.BICUBIC, fillcolor=PAPER)
    pixels = np.asarray(page.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float64)
    pixels = pixels + rng.normal(0, 4, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=85)
    return out.getvalue()
