"""MNIST-style preprocessing shared by predict, the server and the tests: any digit image -> the model's input."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage
from skimage.morphology import skeletonize

from vit_mnist.data.rulings import remove_rulings
from vit_mnist.data.surroundings import remove_surroundings
from vit_mnist.errors import UserError

MNIST_SIZE = 28  # side of the image the model sees
BOX_SIZE = 20  # MNIST digits were scaled to fit a 20x20 box, keeping their aspect ratio ...
CENTER = 14.0  # ... and shifted so the centre of mass lands here (MNIST's test set averages (13.99, 14.01))
INK_THRESHOLD = 0.2  # fraction of the darkest-to-lightest range that counts as ink when cropping
WHITE_PAPER = 192.0  # a 28x28 image whose border's median is lighter than this is a drawing on white, not MNIST's
DARK_BORDER = 64.0  # MNIST's layout has a black border: a digit's 28x28 image with a lighter border median is laid out
MIN_CONTRAST = 16.0  # grey levels between background and ink below which the image counts as blank
MAX_PIXELS = 4096 * 4096  # refuse larger images before decoding them (a small PNG can inflate to gigabytes)
LAYOUTS = ("auto", "full")
# MNIST's stroke width in the 20x20 box (ink area over skeleton length, ink above half strength, measured as
# thicken_thin_strokes does on 3,000 training digits): median 2.75 px, 5th percentile 1.8. A digit written with a
# fine pen and photographed at a few hundred pixels has hairlines under half a pixel wide once fitted to the box;
# strokes thinner than MIN_STROKE_WIDTH are dilated to the median first, and 95% of MNIST's digits pass unchanged.
# (Eroding fat strokes down to the median as well was measured and dropped: it cost 0.6-2.8 points on the UCI
# digits, whose 8x8 scans enlarge to fat strokes, and did not help markers consistently.)
STROKE_WIDTH = 2.75
MIN_STROKE_WIDTH = 1.8
WORK_SIZE = 8 * BOX_SIZE  # longest side at which the stroke width is measured and changed

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


def to_mnist_layout(gray: np.ndarray, layout: str = "auto", digits: bool = True) -> np.ndarray:
    """A grayscale image -> the (28, 28) uint8 image the model sees: white ink on black, as in MNIST.

    layout="full" runs MNIST's own recipe: invert a light background, crop to the ink, scale it to fit
    20x20 keeping the aspect ratio, place it so its centre of mass is at the middle of 28x28.
    layout="auto" uses a 28x28 image as it is when it is already in the dataset's layout, and runs the recipe
    otherwise. For handwritten digits (`digits`) that is MNIST's layout (`in_mnist_layout`): a 28x28 digit that
    fills the frame, sits off-centre or is drawn dark on white is laid out first. For other datasets
    (Fashion-MNIST's garments fill their frame) every 28x28 image is taken as it is, unless it is dark on white
    paper (a border brighter than WHITE_PAPER).
    """
    check_layout(layout)
    gray = np.asarray(gray, dtype=np.float64)
    if layout == "auto" and gray.shape == (MNIST_SIZE, MNIST_SIZE):
        laid_out = in_mnist_layout(gray) if digits else bool(np.median(_border(gray)) <= WHITE_PAPER)
        if laid_out:
            return np.clip(np.rint(gray), 0, 255).astype(np.uint8)

    paper = paper_plane(gray)
    if paper.mean() > 127.5:  # dark ink on light paper: MNIST is light ink on black
        gray, paper = 255.0 - gray, 255.0 - paper
    ink = np.clip(gray - paper, 0, None)  # grey or unevenly lit paper becomes black
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise UserError(
            "No digit found: the image is blank or has almost no contrast between ink and background. "
            "Draw or photograph a single dark digit on a light background (or light on dark)."
        )
    # a table or a scanner's margin along the photo's edge; the ink's strength measured again without it
    ink = remove_surroundings(ink, INK_THRESHOLD * peak)
    peak = float(ink.max())
    ink = remove_rulings(ink, INK_THRESHOLD * peak)  # ruled or squared paper, a form's box
    ink *= 255.0 / float(ink.max())  # faint pencil or a grey scan gets MNIST's full-strength strokes

    # cropped again after thickening, which moves the ink's edges out
    crop = _crop_to_ink(thicken_thin_strokes(_crop_to_ink(ink)))
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


def in_mnist_layout(gray: np.ndarray) -> bool:
    """Whether a 28x28 image is laid out as MNIST's digits are: light ink on a dark border, fitted to 20x20 and
    centred by mass. Every MNIST test digit is (its ink's longer side is 17-20 pixels, its centre of mass within
    0.7 of the middle); a digit resized to 28x28 by hand, which fills the frame, is not."""
    if np.median(_border(gray)) > DARK_BORDER:
        return False
    peak = gray.max()
    if peak < MIN_CONTRAST:
        return True  # blank: nothing to lay out
    inked = gray > INK_THRESHOLD * peak
    rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    if max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 > BOX_SIZE + 1:
        return False
    cy, cx = _center_of_mass(gray)
    return bool(np.hypot(cy - CENTER, cx - CENTER) <= 1.5)


def _border(gray: np.ndarray) -> np.ndarray:
    """The pixels of the image's outermost rows and columns."""
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def paper_plane(gray: np.ndarray) -> np.ndarray:
    """The paper's brightness under every pixel: a plane fitted to the image's border pixels.

    A photo of a note is lit unevenly; a plane through the border (ink that crosses it left out: pixels more than
    three median deviations from the border's median) takes a lighting gradient away, where one grey level for
    the whole page would leave half of it grey.
    """
    height, width = gray.shape
    inner = np.arange(1, height - 1)
    # each border pixel's (row, column), in _border's order
    rows = np.concatenate([np.zeros(width), np.full(width, height - 1), inner, inner]) / height
    cols = np.concatenate([np.arange(width), np.arange(width), np.zeros(len(inner)), np.full(len(inner), width - 1)])
    values = _border(gray)
    median = np.median(values)
    keep = np.abs(values - median) <= 3 * np.median(np.abs(values - median)) + 1.0
    basis = np.stack([np.ones_like(rows), rows, cols / width], axis=1)
    offset, per_row, per_col = np.linalg.lstsq(basis[keep], values[keep], rcond=None)[0]
    return offset + per_row * (np.arange(height) / height)[:, None] + per_col * (np.arange(width) / width)[None, :]


def _crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The smallest rectangle holding every pixel above INK_THRESHOLD of full strength."""
    rows = np.flatnonzero((ink > INK_THRESHOLD * 255).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD * 255).any(axis=0))
    return ink[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


def measure_stroke_width(ink: np.ndarray) -> float:
    """Mean stroke width of white-on-black `ink` in its own pixels: ink area over skeleton length (0: no ink)."""
    mask = ink > 127.5
    length = int(skeletonize(mask).sum())
    return float(mask.sum()) / length if length else 0.0


def thicken_thin_strokes(crop: np.ndarray) -> np.ndarray:
    """A digit cropped to its ink (white on black, 0-255), its strokes dilated to MNIST's width if they are thinner.

    The width is measured at WORK_SIZE pixels on the long side (small crops enlarged, large ones shrunk by a
    block maximum, which keeps a one-pixel pen line at full strength). At MIN_STROKE_WIDTH or wider the crop is
    returned as it is; thinner, the working copy is dilated (grey-level, disk footprint) to STROKE_WIDTH and
    returned in place of the crop.
    """
    long_side = max(crop.shape)
    if long_side > WORK_SIZE:
        k = math.ceil(long_side / WORK_SIZE)
        padded = np.pad(crop, ((0, -crop.shape[0] % k), (0, -crop.shape[1] % k)))
        work = padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).max(axis=(1, 3))
    else:
        size = tuple(max(1, round(n * WORK_SIZE / long_side)) for n in crop.shape[::-1])
        work = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
    box_pixel = max(work.shape) / BOX_SIZE  # work pixels per pixel of the 20x20 box
    width = measure_stroke_width(work) / box_pixel
    if width == 0.0 or width >= MIN_STROKE_WIDTH:
        return crop
    radius = (STROKE_WIDTH - width) / 2 * box_pixel
    r = math.floor(radius)
    rows, cols = np.mgrid[-r:r + 1, -r:r + 1]
    return ndimage.grey_dilation(work, footprint=rows**2 + cols**2 <= radius**2)


def _center_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre of `image`."""
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def normalize(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (..., 28, 28) -> float32 as in training: scaled to [0, 1], then (x - mean) / std."""
    return ((np.asarray(pixels, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)


def preprocess(source: ImageSource, mean: float, std: float, layout: str = "auto", digits: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """Any image file, bytes or array -> (model input float32 (1, 28, 28), the uint8 (28, 28) it shows).

    `mean` and `std` are the checkpoint's `hparams.normalize` values; `digits`: the model reads handwritten
    digits (see `to_mnist_layout`).
    """
    pixels = to_mnist_layout(load_image(source), layout, digits)
    return normalize(pixels, mean, std)[None], pixels
