"""MNIST-style preprocessing shared by predict, the server and the tests: any digit image -> the model's input."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vit_mnist.errors import UserError

MNIST_SIZE = 28  # side of the image the model sees
BOX_SIZE = 20  # MNIST digits were scaled to fit a 20x20 box, keeping their aspect ratio ...
CENTER = 14.0  # ... and shifted so the centre of mass lands here (MNIST's test set averages (13.99, 14.01))
INK_THRESHOLD = 0.2  # fraction of the darkest-to-lightest range that counts as ink when cropping
MIN_CONTRAST = 16.0  # grey levels between background and ink below which the image counts as blank
MAX_PIXELS = 4096 * 4096  # refuse larger images before decoding them (a small PNG can inflate to gigabytes)
LAYOUTS = ("auto", "full")

ImageSource = str | Path | bytes | BinaryIO | Image.Image | np.ndarray


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file, bytes, PIL image or array as a float64 (H, W) grayscale array in [0, 255].

    Transparent pixels are laid over white (a drawing on a transparent canvas is dark ink on nothing);
    float arrays with values in [0, 1] are scaled to [0, 255]; EXIF rotation of photos is applied.
    """
    if isinstance(source, np.ndarray):
        return _array_to_gray(source)
    name = str(source) if isinstance(source, (str, Path)) else "The image"
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"{path} is not a file: give the path of an image (PNG, JPEG, BMP, ...).")
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise UserError("The image is empty (0 bytes): send the bytes of a PNG, JPEG or other image file.")
        source = io.BytesIO(source)
    try:
        with contextlib.nullcontext(source) if isinstance(source, Image.Image) else Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UserError(
                    f"{name} is {width}x{height} pixels, more than the {max_pixels} allowed: "
                    "scale it down (one digit or garment needs no more than a few hundred pixels a side)."
                )
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            gray = np.asarray(image.convert("L"), dtype=np.float64)
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        unknown = isinstance(e, UnidentifiedImageError)
        reason = "not an image format Pillow knows" if unknown else f"{type(e).__name__}: {e}"
        raise UserError(
            f"{name} is not a readable image ({reason}). Give a PNG, JPEG, BMP, GIF, TIFF or WebP file of a "
            "single digit (or, for a Fashion-MNIST model, a single garment)."
        ) from e
    return gray


def _array_to_gray(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) numbers -> float64 (H, W) grayscale in [0, 255]."""
    a = np.asarray(array)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise UserError(f"The pixel array holds {a.dtype} values: it must hold numbers (0-255, or 0-1 floats).")
    a = a.astype(np.float64)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        if a.shape[2] == 4:  # lay transparent pixels over white, as for files
            alpha = a[..., 3:] / (255.0 if a[..., 3].max() > 1 else 1.0)
            white = 255.0 if a[..., :3].max() > 1 else 1.0
            a = a[..., :3] * alpha + white * (1 - alpha)
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114]) if a.shape[2] >= 3 else a[..., 0]
    if a.ndim != 2 or min(a.shape) < 1:
        raise UserError(
            f"The pixel array has shape {tuple(np.shape(array))}: it must be a 2-D grayscale image (H, W) "
            "or a colour image (H, W, 3 or 4)."
        )
    if not np.isfinite(a).all():
        raise UserError("The pixel array holds NaN or infinite values: every pixel must be a number in 0-255.")
    if a.min() < 0 or a.max() > 255:
        raise UserError(
            f"The pixel values run from {a.min():g} to {a.max():g}: they must lie in 0-255 (or 0-1 for floats)."
        )
    kind = np.asarray(array).dtype
    if kind == np.bool_ or (np.issubdtype(kind, np.floating) and a.max() <= 1.0):  # masks and 0-1 floats
        a = a * 255.0
    return a


def check_layout(layout: str) -> str:
    """`layout` if it names a known layout, else a `UserError`."""
    if layout not in LAYOUTS:
        raise UserError(f"layout={layout!r} is not one of {list(LAYOUTS)}: use layout=auto or layout=full.")
    return layout


def to_mnist_layout(gray: np.ndarray, layout: str = "auto") -> np.ndarray:
    """A grayscale image -> the (28, 28) uint8 image the model sees: white ink on black, as in MNIST.

    layout="full" runs MNIST's own recipe: invert a light background, crop to the ink, scale it to fit
    20x20 keeping the aspect ratio, place it so its centre of mass is at the middle of 28x28.
    layout="auto" does the same except for images that are already 28x28, which are taken to be in the
    MNIST layout (like the dataset's own files) and used as they are.
    """
    check_layout(layout)
    gray = np.asarray(gray, dtype=np.float64)
    if layout == "auto" and gray.shape == (MNIST_SIZE, MNIST_SIZE):
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 127.5:  # dark ink on light paper: MNIST is light ink on black
        gray, background = 255.0 - gray, 255.0 - background
    ink = np.clip(gray - background, 0, None)  # grey paper becomes black
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise UserError(
            "No digit found: the image is blank or has almost no contrast between ink and background. "
            "Draw or photograph a single dark digit on a light background (or light on dark)."
        )
    ink *= 255.0 / peak  # faint pencil or a grey scan gets MNIST's full-strength strokes

    rows = np.flatnonzero((ink > INK_THRESHOLD * 255).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD * 255).any(axis=0))
    crop = ink[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    height, width = crop.shape
    scale = BOX_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Pillow antialiases when shrinking, which gives the grey stroke edges MNIST has.
    digit = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0, 255)

    out = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float64)
    cy, cx = _center_of_mass(digit)
    top, left = int(round(CENTER - cy)), int(round(CENTER - cx))
    # Paste with clipping: a very lopsided digit may lose a pixel at the edge, as in MNIST.
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + digit.shape[0], MNIST_SIZE), min(left + digit.shape[1], MNIST_SIZE)
    out[y0:y1, x0:x1] = digit[y0 - top: y1 - top, x0 - left: x1 - left]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _center_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre of `image`."""
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def normalize(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (..., 28, 28) -> float32 as in training: scaled to [0, 1], then (x - mean) / std."""
    return ((np.asarray(pixels, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)


def preprocess(source: ImageSource, mean: float, std: float, layout: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Any image file, bytes or array -> (model input float32 (1, 28, 28), the uint8 (28, 28) it shows).

    `mean` and `std` are the checkpoint's `hparams.normalize` values.
    """
    pixels = to_mnist_layout(load_image(source), layout)
    return normalize(pixels, mean, std)[None], pixels
