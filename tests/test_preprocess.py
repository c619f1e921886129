"""MNIST-style preprocessing: inversion, crop, 20x20 fit, centre of mass, normalisation, and its error messages."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vit_mnist.data import MNISTDataModule, load_split
from vit_mnist.data.preprocess import load_image, normalize, preprocess, to_mnist_layout
from vit_mnist.errors import UserError


def drawn_seven(size: tuple[int, int] = (400, 300), box: tuple[int, int, int, int] = (250, 20, 390, 280),
                ink: int = 30, paper: int = 225, width: int = 24) -> Image.Image:
    """A large dark 7 drawn far off-centre (right side) on light grey paper, like a photo of a note."""
    image = Image.new("L", size, paper)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(image).line([(x0, y0), (x1, y0), (x0 + (x1 - x0) // 3, y1)], fill=ink, width=width)
    return image


def center_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(pixels.shape)
    weights = pixels.astype(np.float64)
    return float((rows * weights).sum() / weights.sum()), float((cols * weights).sum() / weights.sum())


def ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_off_centre_large_light_background_digit_gets_the_mnist_layout() -> None:
    image = drawn_seven()
    pixels = to_mnist_layout(load_image(image))
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    cy, cx = center_of_mass(pixels)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1  # the middle of the 28x28 field
    height, width = ink_box(pixels)
    assert max(height, width) == 20 and height <= 20 and width <= 20  # scaled to fit 20x20
    # inverted: white ink on black as in MNIST, with full-strength strokes
    assert pixels[0].max() == pixels[-1].max() == pixels[:, 0].max() == pixels[:, -1].max() == 0
    assert pixels.max() == 255


def test_aspect_ratio_is_kept() -> None:
    image = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(image).rectangle((20, 40, 59, 239), fill=0)  # a 40 x 200 bar
    height, width = ink_box(to_mnist_layout(load_image(image)))
    assert height == 20 and width == 4


def test_light_ink_on_dark_equals_dark_ink_on_light() -> None:
    dark_on_light = np.asarray(drawn_seven(ink=0, paper=255), dtype=np.float64)
    light_on_dark = 255 - dark_on_light
    np.testing.assert_array_equal(to_mnist_layout(dark_on_light), to_mnist_layout(light_on_dark))


def test_file_bytes_transparency_and_colour_load_alike(tmp_path: Path) -> None:
    gray = drawn_seven(ink=0, paper=255)
    expected = to_mnist_layout(load_image(gray))
    rgba = Image.new("RGBA", gray.size, (0, 0, 0, 0))  # black ink on a transparent canvas
    rgba.putalpha(Image.eval(gray, lambda v: 255 - v))
    path = tmp_path / "digit.png"
    rgba.save(path)
    buffer = io.BytesIO()
    gray.convert("RGB").save(buffer, format="PNG")
    for source in (path, str(path), buffer.getvalue(), np.asarray(gray.convert("RGB"))):
        np.testing.assert_array_equal(to_mnist_layout(load_image(source)), expected)


def test_28x28_input_is_taken_as_mnist_format_in_auto_layout_only() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    np.testing.assert_array_equal(to_mnist_layout(load_image(image), "auto"), image)
    assert not np.array_equal(to_mnist_layout(load_image(image), "full"), image)
    floats = image / 255.0  # 0-1 floats mean the same image
    np.testing.assert_array_equal(to_mnist_layout(load_image(floats), "auto"), image)


def test_normalisation_matches_training(data_dir: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    datamodule = MNISTDataModule(name="mnist", data_dir=str(data_dir))
    expected = datamodule.transform(torch.from_numpy(pixels).unsqueeze(1), train=False).numpy()
    np.testing.assert_allclose(normalize(pixels, datamodule.mean, datamodule.std)[:, None], expected, atol=1e-6)
    x, shown = preprocess(pixels[0], datamodule.mean, datamodule.std)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(shown, pixels[0])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (np.full((50, 60), 200.0), "No digit found"),
        (b"this is not a picture", "not a readable image"),
        (b"", "empty"),
        (np.zeros((4, 4, 5)), "shape"),
        (np.full((28, 28), 300.0), "0-255"),
        (np.array([[np.nan] * 28] * 28), "NaN"),
        (Path("no/such/digit.png"), "is not a file"),
    ],
)
def test_bad_inputs_raise_user_errors(source: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        to_mnist_layout(load_image(source), "full")


def test_unknown_layout_and_huge_images_are_refused() -> None:
    with pytest.raises(UserError, match="layout"):
        to_mnist_layout(np.zeros((28, 28)), "centre")
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000), 255).save(buffer, format="PNG")  # about 25 kB, 25 megapixels
    with pytest.raises(UserError, match="pixels"):
        load_image(buffer.getvalue())


@pytest.mark.slow
def test_real_mnist_digits_are_nearly_unchanged_by_the_full_pipeline() -> None:
    """MNIST's own digits already have the layout: running the whole recipe on them must barely move them."""
    data_dir = os.environ.get("VIT_MNIST_DATA_DIR", "")
    if not (Path(data_dir) / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST not found: set VIT_MNIST_DATA_DIR to a folder holding MNIST/raw")
    images, _ = load_split("mnist", data_dir, "test", download=False)
    images = images[:300, 0].numpy()
    redone = np.stack([to_mnist_layout(load_image(im), "full") for im in images])
    correlation = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(images, redone, strict=True)]
    assert np.median(correlation) > 0.99 and np.percentile(correlation, 5) > 0.95
    shift = [np.hypot(*np.subtract(center_of_mass(a), center_of_mass(b))) for a, b in zip(images, redone, strict=True)]
    assert np.percentile(shift, 95) < 0.5  # pixels
