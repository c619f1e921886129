"""Paper rulings, grid lines and form boxes taken out of a digit's photo before it is cropped to its ink."""

# A digit written on ruled or squared paper, or in a form's box, is photographed with straight lines that run
# (nearly) across the whole image. Cropped with the digit, they squeeze it into a corner of the 20x20 box or lay a
# grey band over it (a boxed 4 was read "4 or 2?" at 13%). A ruling is a band of rows (or columns) inked across
# most of the image, thin where it runs: where a pen stroke crosses it or lies along it the ink is thicker and is
# kept. Lines count as rulings only as a ruled page (three or more one way) or a grid or box (two or more each
# way): a digit has one or two long straight strokes at most (a 4's bar and stem, a 1), which stay as drawn.

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_SPAN = 0.7  # a ruling runs across at least this share of the image's width (or height)
MIN_LINES = 3  # parallel lines in one direction that make a ruled page (or two each way: a box, a grid)
MIN_LEFT = 0.05  # the digit keeps at least this share of the ink: else what looked like rulings was the drawing
MAX_THICKNESS = 0.03  # of the image's other side: a ruling is thinner (a pen on a drawing canvas is 5-10%)
TILT = 0.02  # how far (a share of the image's other side) a line may drift across the image: about 1 degree
MIN_SIDE = 64  # pixels: smaller images are scans of one digit (MNIST's 28, the UCI digits' 8), never ruled paper


def remove_rulings(ink: np.ndarray, threshold: float) -> np.ndarray:
    """White-on-black `ink` (H, W) with its rulings (and their blurred edges) set to black: thin straight lines
    across at least MIN_SPAN of the image, MIN_LINES or more in one direction (a ruled page) or two or more each
    way (a grid, a box). `threshold` is the grey level above which a pixel is ink. Returns `ink` itself (the same
    object) when it holds no rulings."""
    # rulings are printed paler than a pen writes: found on ink above half the threshold, and taken away there
    mask = ink > threshold / 2
    (across, n_across), (down, n_down) = _lines(mask, axis=1), _lines(mask, axis=0)
    box = n_across >= 2 and n_down >= 2
    use_across, use_down = n_across >= MIN_LINES or box, n_down >= MIN_LINES or box
    if not (use_across or use_down):
        return ink
    lines = (across if use_across else False) | (down if use_down else False)
    if use_across and use_down:  # where rulings cross (a grid, a box's corners) the ink is thick both ways
        lines = lines | (mask & across.any(axis=1)[:, None] & down.any(axis=0)[None, :])
    strokes = mask & ~lines
    # next to a line, the faint pixels are its blurred edges; a stroke's own pixels stay
    edges = ndimage.binary_dilation(lines, iterations=2) & ~strokes
    out = np.where(edges, 0.0, ink)
    if (out > threshold).sum() < MIN_LEFT * (ink > threshold).sum():
        return ink
    return out


def _lines(mask: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """The pixels of `mask` on thin straight lines along `axis` (1: horizontal, 0: vertical) across MIN_SPAN of the
    image, and how many such lines there are."""
    across = mask.shape[1 - axis]
    none = np.zeros_like(mask), 0
    if min(mask.shape) < MIN_SIDE:
        return none
    # a photo is rarely square to the page: a line may drift over a few pixels across the image, and a pale,
    # blurred or noisy one breaks up here and there; so a line is a band of rows (or columns) mostly inked
    size = [1, 1]
    size[1 - axis] = 2 * max(1, round(TILT * across)) + 1
    lenient = ndimage.maximum_filter(mask.astype(np.uint8), size=tuple(size)) > 0
    inked = lenient.mean(axis=axis) >= MIN_SPAN
    candidate = mask & (inked[:, None] if axis == 1 else inked[None, :])
    if not candidate.any():
        return none
    # thin: the ink's extent across the line is the line's own, not that of a stroke that crosses or touches it
    thickness = _run_lengths(mask, 1 - axis)
    # the lines' typical thickness: a low quantile, as strokes and the pieces of a grid's other lines that touch
    # these rows are thicker; the other way's unbroken rulings left out altogether
    own = candidate & (thickness < MIN_SPAN * across)
    if not own.any():
        return none
    typical = float(np.quantile(thickness[own], 0.25))
    if typical > MAX_THICKNESS * across:
        return none  # as thick as pen strokes on a drawing: strokes, not rulings
    on_line = candidate & (thickness <= 2 * typical + 1)
    _, count = ndimage.label(on_line.any(axis=axis))  # one band of consecutive rows (or columns) per line
    return on_line, count


def _run_lengths(mask: np.ndarray, axis: int) -> np.ndarray:
    """For each pixel of `mask`, the length of the run of True pixels along `axis` that holds it (0 elsewhere)."""
    m = mask if axis == 1 else mask.T
    padded = np.pad(m, ((0, 0), (1, 1)))
    change = np.diff(padded.astype(np.int8), axis=1)  # +1 where a run starts, -1 just after it ends
    rows, starts = np.nonzero(change == 1)
    _, ends = np.nonzero(change == -1)  # row-major order: the i-th end closes the i-th start
    run_length = ends - starts
    # write each run's length over its pixels: a +length at its start, -length after it, summed along the row
    marks = np.zeros((m.shape[0], m.shape[1] + 1), dtype=np.int64)
    np.add.at(marks, (rows, starts), run_length)
    np.add.at(marks, (rows, ends), -run_length)
    lengths = np.cumsum(marks, axis=1)[:, : m.shape[1]].astype(np.int32) * m
    return lengths if axis == 1 else lengths.T
