"""Images that are not digits (letters, scribbles, shapes, noise, another dataset's images), made deterministically
in MNIST's layout through predict's preprocessing: what the out-of-domain benchmark measures a model on."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from vit_mnist.data.idx import read_images
from vit_mnist.data.preprocess import to_mnist_layout
from vit_mnist.data.sources import SPLIT_FILES, ensure_files, get_spec, is_handwritten
from vit_mnist.errors import UserError

log = logging.getLogger(__name__)

# The benchmark's images, the training-time outliers (outlier exposure) and the outliers a detector's thresholds are
# checked on come from different random streams (and, for `fashion`/`digits`, different files or ends of one), so no
# benchmark image is ever trained or fixed on, and the threshold check never sees an image a model was trained on.
SPLITS = ("benchmark", "training", "thresholds")
# Glyphs left out because they are digits in disguise, handwritten or printed (the `letters` set's keep-list follows).
EXCLUDED_LETTERS = {
    "O": "a 0", "o": "a 0", "Q": "a 0 with a tail", "D": "a 0 once written",
    "I": "a 1", "l": "a 1", "i": "a 1 with a dot", "j": "a 1 with a dot and a hook",
    "S": "a 5", "s": "a 5", "Z": "a 2", "z": "a 2", "B": "an 8", "b": "a 6", "G": "a 6 once written",
    "g": "a 9", "q": "a 9",
}
LETTERS = "ACEFHJKLMNPRTUVWXYacdefhkmnprtuvwxy"
# matplotlib's own fonts (no download, the same on every install): family, weights and slants
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
FONT_SIZES = (20, 32, 56)  # pixels: small glyphs keep the hinting's blocky strokes, large ones smooth curves
CANVAS = 112  # side of the canvas strokes and glyphs are drawn on (MNIST's 20x20 box is fitted afterwards)

# name -> (row label in reports, what it is)
NON_DIGIT_SETS = {
    "letters": ("letters", f"capital and small letters ({LETTERS}) rendered in the {len(FONT_FILES)} font faces "
                           "that ship with matplotlib (DejaVu Sans/Serif/Mono, STIX, Computer Modern; regular, "
                           "bold, oblique and italic) at several sizes, slanted, rotated and stretched at random, "
                           "and, one in three, capitals drawn as pen strokes; letters that are digits in disguise "
                           f"left out ({''.join(EXCLUDED_LETTERS)})"),
    "scribbles": ("scribbles", "random pen strokes: tangled random walks, zigzag scratches, coils and smooth "
                               "random curves"),
    "shapes": ("shapes", "simple shapes, drawn or filled: squares, rectangles, triangles, diamonds, stars, plus "
                         "and times signs, hash signs, equals signs, dashes, arrows, hearts, smileys, blobs and dots "
                         "(no ring or oval: that is a drawn 0)"),
    "noise": ("noise", "uniform, Gaussian and salt-and-pepper noise and smooth random blotches"),
    "fashion": ("Fashion-MNIST", "Fashion-MNIST's test images (garments), for a model of digits"),
    "digits": ("MNIST digits", "MNIST's test digits, for a model of garments"),
}
SET_SIZES = {"letters": 1000, "scribbles": 500, "shapes": 500, "noise": 400, "fashion": 1000, "digits": 1000}
GENERATED = ("letters", "scribbles", "shapes", "noise")


def non_digit_sets_for(dataset: str) -> list[str]:
    """The NON_DIGIT_SETS that lie outside `dataset`'s domain: the generated ones and the other dataset."""
    return [*GENERATED, "fashion" if is_handwritten(dataset) else "digits"]


# ---- drawing -------------------------------------------------------------------------------------------------

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 12) -> Stroke:
    """Points along an ellipse, angles in degrees, y pointing down (90 is the bottom)."""
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(start, end, n)]


# Capitals as pen strokes in a unit box (x right, y down), drawn as people write them.
PEN_LETTERS: dict[str, list[Stroke]] = {
    "A": [[(0, 1), (0.5, 0), (1, 1)], [(0.22, 0.6), (0.78, 0.6)]],
    "C": [_arc(0.55, 0.5, 0.5, 0.5, -50, -310, 16)],
    "E": [[(0.9, 0), (0, 0), (0, 1), (0.9, 1)], [(0, 0.5), (0.7, 0.5)]],
    "F": [[(0.9, 0), (0, 0), (0, 1)], [(0, 0.5), (0.7, 0.5)]],
    "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 0.5), (1, 0.5)]],
    "J": [[(0.3, 0), (1, 0)], [(0.7, 0), (0.7, 0.7), *_arc(0.4, 0.7, 0.3, 0.3, 0, 180, 10)]],
    "K": [[(0, 0), (0, 1)], [(0.9, 0), (0, 0.55), (0.9, 1)]],
    "L": [[(0, 0), (0, 1), (0.8, 1)]],
    "M": [[(0, 1), (0, 0), (0.5, 0.65), (1, 0), (1, 1)]],
    "N": [[(0, 1), (0, 0), (1, 1), (1, 0)]],
    "P": [[(0, 1), (0, 0), *_arc(0, 0.27, 0.75, 0.27, -90, 90, 12)]],
    "R": [[(0, 1), (0, 0), *_arc(0, 0.27, 0.75, 0.27, -90, 90, 12)], [(0.3, 0.54), (0.85, 1)]],
    "T": [[(0, 0), (1, 0)], [(0.5, 0), (0.5, 1)]],
    "U": [[(0, 0), *_arc(0.5, 0.55, 0.5, 0.45, 180, 0, 14), (1, 0)]],
    "V": [[(0, 0), (0.5, 1), (1, 0)]],
    "W": [[(0, 0), (0.25, 1), (0.5, 0.35), (0.75, 1), (1, 0)]],
    "X": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "Y": [[(0, 0), (0.5, 0.5), (1, 0)], [(0.5, 0.5), (0.5, 1)]],
}


def _affine(rng: np.random.Generator, rotate: float = 12.0, shear: float = 0.25) -> np.ndarray:
    """A random 2x2 map: rotation (degrees), shear and a stretch of either axis."""
    angle = math.radians(rng.uniform(-rotate, rotate))
    c, s = math.cos(angle), math.sin(angle)
    stretch = np.diag([rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)])
    return np.array([[c, -s], [s, c]]) @ np.array([[1.0, rng.uniform(-shear, shear)], [0.0, 1.0]]) @ stretch


def _draw(strokes: list[Stroke], width: float, rng: np.random.Generator | None = None, jitter: float = 0.0,
          transform: np.ndarray | None = None, filled: list[Stroke] = ()) -> np.ndarray:
    """Strokes (and filled polygons) in a unit box -> a white-on-black float (CANVAS, CANVAS) drawing, the box
    centred and mapped to the canvas's middle 70%, pen `width` in canvas pixels, round joints and ends."""
    transform = np.eye(2) if transform is None else transform
    image = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(image)
    scale, middle = 0.7 * CANVAS, CANVAS / 2

    def to_canvas(points: Stroke) -> list[tuple[float, float]]:
        p = np.asarray(points, dtype=np.float64) - 0.5
        if jitter and rng is not None:
            p = p + rng.normal(0.0, jitter, p.shape)
        p = p @ transform.T * scale + middle
        return [(float(x), float(y)) for x, y in p]

    for polygon in filled:
        draw.polygon(to_canvas(polygon), fill=255)
    r = width / 2
    for stroke in strokes:
        points = to_canvas(stroke)
        if len(points) > 1:
            draw.line(points, fill=255, width=max(1, round(width)), joint="curve")
        for x, y in (points[0], points[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(image, dtype=np.float64)


@functools.lru_cache(maxsize=None)
def _font(file: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / file), size)


def font_letter(rng: np.random.Generator) -> np.ndarray:
    """A letter from LETTERS in one of FONT_FILES at one of FONT_SIZES, slanted, rotated and stretched at random."""
    char = LETTERS[rng.integers(len(LETTERS))]
    font = _font(FONT_FILES[rng.integers(len(FONT_FILES))], int(FONT_SIZES[rng.integers(len(FONT_SIZES))]))
    image = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(image).text((CANVAS / 2, CANVAS / 2), char, fill=255, font=font, anchor="mm")
    m = np.linalg.inv(_affine(rng, rotate=10.0, shear=0.3))  # PIL maps output pixels back to input pixels
    centre = np.array([CANVAS / 2, CANVAS / 2])
    offset = centre - m @ centre
    image = image.transform(image.size, Image.Transform.AFFINE, (*m[0], offset[0], *m[1], offset[1]),
                            resample=Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float64)


def pen_letter(rng: np.random.Generator) -> np.ndarray:
    """A capital of PEN_LETTERS drawn with a pen: its points jittered, the letter slanted and stretched."""
    strokes = PEN_LETTERS[list(PEN_LETTERS)[rng.integers(len(PEN_LETTERS))]]
    return _draw(strokes, rng.uniform(4, 12), rng, jitter=0.03, transform=_affine(rng))


def letter(rng: np.random.Generator, index: int) -> np.ndarray:
    """Two in three images a font's letter, one in three a pen-drawn capital."""
    return pen_letter(rng) if index % 3 == 2 else font_letter(rng)


def scribble(rng: np.random.Generator, index: int) -> np.ndarray:
    """A tangled random walk, a zigzag scratch, a coil or a smooth random curve (in turn)."""
    kind = index % 4
    if kind == 0:  # a random walk whose heading drifts, kept inside the box
        heading, point, points = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 0.7, 2), []
        for _ in range(int(rng.integers(60, 150))):
            heading += rng.normal(0.0, 0.6)
            point = np.clip(point + 0.03 * np.array([math.cos(heading), math.sin(heading)]), 0, 1)
            points.append(tuple(point))
        strokes = [points]
    elif kind == 1:  # back and forth, as when crossing something out
        n = int(rng.integers(5, 10))
        strokes = [[(float(i % 2 + rng.normal(0, 0.06)), float(i / (n - 1) + rng.normal(0, 0.03)))
                    for i in range(n)]]
    elif kind == 2:  # a run of cursive loops, as in "eeee"
        loops = rng.uniform(2.5, 4.5)
        t = np.linspace(0, 2 * math.pi * loops, int(40 * loops))
        r = 0.5 / loops
        x = t / t[-1] * (1 - 2 * r) * 1.6 + r + r * np.cos(t + math.pi)
        strokes = [list(zip(x / 1.6, 0.5 + 0.6 * r * np.sin(t) * rng.uniform(1, 2)))]
    else:  # a smooth curve through random points (heavily smoothed random polyline)
        anchors = rng.uniform(0, 1, (int(rng.integers(6, 10)), 2))
        dense = np.concatenate([np.linspace(a, b, 12, endpoint=False) for a, b in zip(anchors, anchors[1:])])
        strokes = [[tuple(p) for p in ndimage.gaussian_filter1d(dense, 4.0, axis=0, mode="nearest")]]
    return _draw(strokes, rng.uniform(3, 8), rng, transform=_affine(rng, rotate=180.0))


def _polygon(points: int, radius: Callable[[int], float], turn: float = 0.0) -> Stroke:
    return [(0.5 + 0.5 * radius(i) * math.cos(turn + 2 * math.pi * i / points),
             0.5 + 0.5 * radius(i) * math.sin(turn + 2 * math.pi * i / points)) for i in range(points)]


SHAPES = ("square", "rectangle", "triangle", "diamond", "star", "plus", "times", "hash", "equals", "dash", "arrow",
          "heart", "smiley", "blob")


def shape(rng: np.random.Generator, index: int) -> np.ndarray:
    """One of SHAPES (in turn), drawn or filled, turned and stretched at random."""
    name = SHAPES[index % len(SHAPES)]
    filled = bool(rng.integers(2))
    width = rng.uniform(3, 10)
    turn = _affine(rng, rotate=20.0, shear=0.15)
    if name in ("square", "rectangle", "triangle", "diamond", "star"):
        outline = {"square": [(0, 0), (1, 0), (1, 1), (0, 1)],
                   "rectangle": [(0, 0.25), (1, 0.25), (1, 0.75), (0, 0.75)],
                   "triangle": [(0.5, 0), (1, 0.9), (0, 0.9)],
                   "diamond": [(0.5, 0), (0.85, 0.5), (0.5, 1), (0.15, 0.5)],
                   "star": _polygon(10, lambda i: 1.0 if i % 2 == 0 else 0.4, -math.pi / 2)}[name]
        if name == "rectangle" and rng.integers(2):
            outline = [(y, x) for x, y in outline]  # standing up
        return _draw([] if filled else [[*outline, outline[0]]], width, transform=turn, filled=[outline] * filled)
    if name == "blob":  # a filled, smoothly irregular blob; nearly round, it is a dot
        bumps = rng.normal(0.0, rng.uniform(0.0, 0.25), 6)
        radius = lambda i: 1.0 + sum(b * math.sin((k + 2) * 2 * math.pi * i / 48 + k) for k, b in enumerate(bumps))
        return _draw([], width, transform=turn, filled=[_polygon(48, lambda i: max(0.3, radius(i)))])
    if name == "heart":
        t = np.linspace(0, 2 * math.pi, 48)
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        outline = list(zip(x / 34 + 0.5, (y + 2) / 34 + 0.5))
        return _draw([] if filled else [[*outline, outline[0]]], width, transform=turn, filled=[outline] * filled)
    strokes = {
        "plus": [[(0.5, 0), (0.5, 1)], [(0, 0.5), (1, 0.5)]],
        "times": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
        "hash": [[(0.35, 0), (0.3, 1)], [(0.7, 0), (0.65, 1)], [(0, 0.33), (1, 0.33)], [(0, 0.67), (1, 0.67)]],
        "equals": [[(0, 0.35), (1, 0.35)], [(0, 0.65), (1, 0.65)]],
        "dash": [[(0, 0.5), (1, 0.5)]],  # within 20 degrees of level: upright, it would be a 1
        "arrow": [[(0, 0.5), (1, 0.5)], [(0.65, 0.2), (1, 0.5), (0.65, 0.8)]],
        "smiley": [_arc(0.5, 0.5, 0.5, 0.5, 0, 360, 40), _arc(0.5, 0.5, 0.3, 0.28, 20, 160, 12),
                   [(0.33, 0.33), (0.34, 0.36)], [(0.66, 0.33), (0.67, 0.36)]],
    }[name]
    if name == "arrow":  # any direction
        angle = rng.uniform(0, 2 * math.pi)
        turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return _draw(strokes, width, rng, jitter=0.015, transform=turn)


def noise(rng: np.random.Generator, index: int) -> np.ndarray:
    """Uniform, Gaussian or salt-and-pepper noise or smooth blotches (in turn), on a 28-64 pixel square."""
    side = int(rng.integers(28, 65))
    kind = index % 4
    if kind == 0:
        return rng.uniform(0, 255, (side, side))
    if kind == 1:
        return np.clip(rng.normal(rng.uniform(60, 190), rng.uniform(30, 80), (side, side)), 0, 255)
    if kind == 2:  # white salt on a black ground (pepper is the ground)
        return 255.0 * (rng.uniform(0, 1, (side, side)) < rng.uniform(0.03, 0.3))
    field = ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), rng.uniform(1.5, 5.0))
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-12)
    return 255.0 * np.clip((field - rng.uniform(0.4, 0.6)) * 4, 0, 1)  # the highest parts of the field


GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "letters": letter, "scribbles": scribble, "shapes": shape, "noise": noise}


# ---- the sets --------------------------------------------------------------------------------------------------

def _check(name: str, split: str, count: int | None) -> None:
    if name not in NON_DIGIT_SETS:
        raise UserError(f"{name!r} is not a non-digit set: choose from {list(NON_DIGIT_SETS)}.")
    if split not in SPLITS:
        raise UserError(f"split={split!r} is not one of {list(SPLITS)}: `benchmark` for measuring, `training` for "
                        "outliers a model is trained on, `thresholds` for checking a detector's thresholds (never the "
                        "same images).")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise UserError(f"count={count!r} must be a positive whole number of images, or None for the set's own size.")


def _dataset_images(dataset: str, split: str, count: int, data_dir: str | Path | None, download: bool
                    ) -> np.ndarray:
    """The first `count` images of `dataset`'s test split (benchmark) or training split (training), or the last
    `count` of its training split (thresholds: apart from any outlier pool, which takes the first)."""
    if data_dir is None:
        raise UserError(f"The non-digit set of {dataset} images needs the data folder: pass data_dir.")
    spec = get_spec(dataset)
    files = ensure_files(spec, data_dir, download)
    images = read_images(files[SPLIT_FILES["test" if split == "benchmark" else "train"][0]], spec.image_size)
    return images[-count:] if split == "thresholds" else images[:count]


@functools.lru_cache(maxsize=16)
def make_non_digits(name: str, count: int | None = None, seed: int = 0, split: str = "benchmark",
                    data_dir: str | None = None, download: bool = False) -> torch.Tensor:
    """The non-digit set `name` as uint8 (N, 1, 28, 28) white-on-black images in MNIST's layout: N = `count`, else
    SET_SIZES[name]. The same images on every call for the same arguments, and the first N of a larger set are the
    set of N. `split` picks the benchmark's images, a training set's or a threshold check's (SPLITS: other
    random streams, other files).

    Each drawing (on a CANVAS-pixel canvas, or a 28-64 pixel noise image) takes the path of a user's image in
    `predict` and the web app: the ink cropped, strokes thickened to MNIST's width, fitted to 20x20, centred by
    mass. `fashion` (Fashion-MNIST's garments, for models of digits) and `digits` (MNIST's digits, for models of
    garments) read the data folder `data_dir` and go through the layout the model's own users' images get.
    """
    _check(name, split, count)
    count = SET_SIZES[name] if count is None else count
    if name in ("fashion", "digits"):
        dataset = "fashion_mnist" if name == "fashion" else "mnist"
        images = _dataset_images(dataset, split, count, data_dir, download)
        # as predict lays out a 28x28 image for a model of digits (fashion) or of garments (digits)
        out = [to_mnist_layout(image, "auto", digits=name == "fashion") for image in images]
    else:
        stream = [list(NON_DIGIT_SETS).index(name), SPLITS.index(split), int(seed)]
        # one generator per image: image i is the same whatever `count` is
        out = [to_mnist_layout(GENERATORS[name](np.random.default_rng([*stream, i]), i), layout="full")
               for i in range(count)]
    return torch.from_numpy(np.stack(out))[:, None]


def load_non_digit_sets(dataset: str, data_dir: str | Path | None, limit: int | None = None, seed: int = 0,
                        download: bool = False, split: str = "benchmark",
                        make: Callable[[str, int, int, str, str | None], torch.Tensor] | None = None
                        ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The NON_DIGIT_SETS outside `dataset`'s domain (`limit`: at most N images each) from `split`, and a note for
    each set that could not be made (the other dataset's files missing), which is then left out. `make(name, count,
    seed, split, data_dir)` makes a set instead of make_non_digits (vit_mnist.data.image_cache's disk cache)."""
    sets, notes = {}, []
    for name in non_digit_sets_for(dataset):
        count = SET_SIZES[name] if limit is None else min(limit, SET_SIZES[name])
        folder = None if data_dir is None else str(data_dir)
        try:
            sets[name] = (make(name, count, seed, split, folder) if make is not None
                          else make_non_digits(name, count, seed, split, folder, download))
        except UserError as e:
            notes.append(f"{NON_DIGIT_SETS[name][0]} left out: {e}")
            log.warning("The non-digit set %s is left out: %s", name, e)
    return sets, notes
