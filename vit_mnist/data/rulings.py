"""Paper rulings, grid lines and form boxes taken out of a digit's photo before it is cropped to its ink."""

# A digit written on ruled or squared paper, or in a form's box, is photographed with straight lines that run
# (nearly) across the whole image. Cropped with the digit, they squeeze it into a corner of the 20x20 box or lay a
# grey band over it (a boxed 4 was read "4 or 2?" at 13%). A ruling is a band of rows (or columns) inked across
# most of the image, thin where it runs: where a pen stroke crosses it or lies along it the ink is thicker and is
# kept. Lines count as rulings only as a ruled page (three or more one way) or a grid or box (two or more each
# way): a digit has one or two long straight strokes at most (a 4's bar and stem, a 1), which stay as drawn. A
# page's lines also run on past the writing at both ends; three bars that end at a stroke (an E, an angular 3,
# cropped tightly so that they span the photo) are the drawing's own and stay. A photo is rarely square to the
# page: lines are looked for at tilts of up to 3 degrees.

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_SPAN = 0.7  # a ruling runs across at least this share of the image's width (or height)
MIN_LINES = 3  # parallel lines in one direction that make a ruled page (or two each way: a box, a grid)
MIN_LEFT = 0.05  # the digit keeps at least this share of the ink: else what looked like rulings was the drawing
MAX_THICKNESS = 0.03  # of the image's other side: a ruling is thinner (a pen on a drawing canvas is 5-10%)
MAX_TILT = 3.0  # degrees: a page photographed this far from square still has its rulings found
TILTS = sorted(np.arange(-MAX_TILT, MAX_TILT + 0.25, 0.5), key=abs)  # the tilts tried, level first
TILT_SIDE = 400  # pixels: the tilt is found on a copy this small
DRIFT = 0.01  # of the image's width: how far a levelled line may still drift, blurred edges included
CROSSING = 0.015  # of the image's side: around two crossing rulings, the ink is theirs however thick it is there
MIN_SIDE = 64  # pixels: smaller images are scans of one digit (MNIST's 28, the UCI digits' 8), never ruled paper
MARGIN = 0.02  # of the image's width (height): how far rulings run on past the writing, at each end
STRAY = 0.02  # of the ink left: smaller pieces (specks, a line's bits at the photo's edge) are not the writing


def remove_rulings(ink: np.ndarray, threshold: float) -> np.ndarray:
    """White-on-black `ink` (H, W) with its rulings (and their blurred edges) set to black: thin straight lines
    across at least MIN_SPAN of the image, MIN_LINES or more in one direction (a ruled page) or two or more each
    way (a grid, a box), that run on past the writing at both ends. `threshold` is the grey level above which a
    pixel is ink. Returns `ink` itself (the same object) when it holds no rulings."""
    # rulings are printed paler than a pen writes: found on ink above half the threshold, and taken away there
    mask = ink > threshold / 2
    (across, n_across), (down, n_down) = _lines(mask, axis=1), _lines(mask, axis=0)
    use_across, use_down = n_across > 0, n_down > 0
    while True:
        box = use_across and use_down and n_across >= 2 and n_down >= 2
        use_across, use_down = use_across and (n_across >= MIN_LINES or box), use_down and (n_down >= MIN_LINES or box)
        if not (use_across or use_down):
            return ink
        out = _taken_out(ink, mask, across if use_across else None, down if use_down else None)
        left = out > threshold
        if left.sum() < MIN_LEFT * (ink > threshold).sum():
            return ink
        # lines that stop where the writing does are its strokes (an E's bars): kept, and the rest looked at again
        writing = writing_pieces(left)
        past_across = not use_across or _run_past(across, writing, axis=1)
        past_down = not use_down or _run_past(down, writing, axis=0)
        if past_across and past_down:
            return out
        use_across, use_down = use_across and past_across, use_down and past_down


def _taken_out(ink: np.ndarray, mask: np.ndarray, across: np.ndarray | None, down: np.ndarray | None) -> np.ndarray:
    """`ink` without the pixels of the lines `across` and `down` (None: not taken out) and their blurred edges."""
    lines = np.zeros_like(mask)
    for found in (across, down):
        if found is not None:
            lines |= found
    if across is not None and down is not None:  # where rulings cross (a grid, a box's corners) the ink is thick
        reach = max(3, round(CROSSING * min(mask.shape)))
        near = [ndimage.binary_dilation(m, iterations=reach) for m in (across, down)]
        lines |= mask & near[0] & near[1]
    strokes = mask & ~lines
    # next to a line, the faint pixels are its blurred edges; a stroke's own pixels stay
    edges = ndimage.binary_dilation(lines, iterations=2) & ~strokes
    return np.where(edges, 0.0, ink)


def writing_pieces(left: np.ndarray) -> np.ndarray:
    """The pieces of the ink `left` that make the writing: each at least STRAY of it (8-connected)."""
    pieces, _ = ndimage.label(left, structure=np.ones((3, 3)))
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0  # the background
    return np.isin(pieces, np.nonzero(sizes >= STRAY * left.sum())[0])


def _run_past(lines: np.ndarray, writing: np.ndarray, axis: int) -> bool:
    """Whether the lines along `axis` (1: horizontal) run on past the `writing` at both ends by MARGIN of the image
    (a ruled page's or a box's lines do; an E's bars end at its stem)."""
    written = writing.nonzero()[axis]
    if not len(written):
        return True
    span = lines.any(axis=1 - axis).nonzero()[0]
    margin = MARGIN * lines.shape[axis]
    return bool(span[0] <= written.min() - margin and span[-1] >= written.max() + margin)


def _lines(mask: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """The pixels of `mask` on thin straight lines along `axis` (1: horizontal, 0: vertical) across MIN_SPAN of the
    image, and how many such lines there are."""
    if axis == 0:
        lines, count = _horizontal_lines(mask.T)
        return lines.T, count
    return _horizontal_lines(mask)


def _horizontal_lines(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """`_lines` for horizontal lines, tilted by up to MAX_TILT degrees."""
    height, width = mask.shape
    none = np.zeros_like(mask), 0
    if min(height, width) < MIN_SIDE:
        return none
    # a photo is rarely square to the page: each column is shifted so that lines at the page's tilt run level
    degrees, coverage = _tilt(mask)
    if coverage < MIN_SPAN:  # no row is inked across enough of the image at any tilt: no line (most images)
        return none
    rows = _source_rows(height, width, degrees)
    level = _levelled(mask, rows) if degrees else mask
    # what is left of the tilt drifts over a pixel or two, and a pale, blurred or noisy line breaks up here and
    # there: a line is a band of rows mostly inked
    reach = max(1, round(DRIFT * width))
    lenient = ndimage.maximum_filter(level.astype(np.uint8), size=(2 * reach + 1, 1)) > 0
    candidate = level & (lenient.mean(axis=1) >= MIN_SPAN)[:, None]
    if not candidate.any():
        return none
    # thin: the ink's extent across the line is the line's own, not that of a stroke that crosses or touches it
    thickness = _run_lengths(level, 0)
    # the lines' typical thickness: a low quantile, as strokes and the pieces of a grid's other lines that touch
    # these rows are thicker; the other way's unbroken rulings left out altogether
    own = candidate & (thickness < MIN_SPAN * height)
    if not own.any():
        return none
    typical = float(np.quantile(thickness[own], 0.25))
    if typical > MAX_THICKNESS * height:
        return none  # as thick as pen strokes on a drawing: strokes, not rulings
    on_line = candidate & (thickness <= 2 * typical + 1)
    _, count = ndimage.label(on_line.any(axis=1))  # one band of consecutive rows per line
    lines = np.zeros_like(mask)
    keep = on_line & (rows >= 0)
    lines[rows[keep], np.nonzero(keep)[1]] = True
    return lines, count


def _source_rows(height: int, width: int, degrees: float) -> np.ndarray:
    """(height, width) row indices: row r of the levelled image is row [r, c] of column c in the photo (-1: outside)."""
    offsets = np.rint(np.tan(np.radians(degrees)) * (np.arange(width) - width / 2)).astype(np.int64)
    rows = np.arange(height)[:, None] + offsets[None, :]
    return np.where((rows >= 0) & (rows < height), rows, -1)


def _levelled(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`mask` with each column shifted by `_source_rows`' map (False where the map falls outside the photo)."""
    cols = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)
    return np.where(rows >= 0, mask[np.maximum(rows, 0), cols], False)


def _tilt(mask: np.ndarray) -> tuple[float, float]:
    """The angle in TILTS (degrees) at which the most inked row of the levelled mask is the most inked (the page's
    tilt where it has rulings), and that row's inked share; found on a copy of at most TILT_SIDE pixels a side,
    each pixel the max of a block (so the share is an upper bound of the full image's)."""
    k = max(1, int(np.ceil(max(mask.shape) / TILT_SIDE)))
    padded = np.pad(mask, ((0, -mask.shape[0] % k), (0, -mask.shape[1] % k)))
    small = padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).any(axis=(1, 3))
    height, width = small.shape
    # an upper bound first: rows widened by the drift of the largest tilt hold any line whole; if none of them is
    # inked across MIN_SPAN of the image, no tilt gives a line (most images: a digit without rulings)
    drift = int(np.ceil(np.tan(np.radians(MAX_TILT)) * width / 2)) + 1
    bound = float((ndimage.maximum_filter(small.astype(np.uint8), size=(2 * drift + 1, 1)) > 0).mean(axis=1).max())
    if bound < MIN_SPAN:
        return 0.0, bound
    best, best_coverage = 0.0, -1.0
    for degrees in TILTS:
        level = _levelled(small, _source_rows(height, width, degrees))
        coverage = float((ndimage.maximum_filter(level.astype(np.uint8), size=(3, 1)) > 0).mean(axis=1).max())
        if coverage > best_coverage + 1e-9:  # level (0) first: a tilt must do strictly better
            best, best_coverage = degrees, coverage
    return best, best_coverage


def _run_lengths(mask: np.ndarray, axis: int) -> np.ndarray:
    """For each pixel of `mask`, the length of the run of True pixels along `axis` that holds it (0 elsewhere)."""
    m = mask if axis == 1 else mask.T
    padded = np.pad(m, ((0, 0), (1, 1)))
    change = np.diff(padded.astype(np.int8), axis=1)  # +1 where a run starts, -1 just after it ends
    rows, starts = np.nonzero(change == 1)
    _, ends = np.nonzero(change == -1)  # row-major order: the i-th end closes the i-th start
    run_length = ends - starts
    # write each run's length over its pixels: a +length at its start, -length after it, summed along the row
    # (a start and an end never share a place: runs are apart by a False pixel at least)
    marks = np.zeros((m.shape[0], m.shape[1] + 1), dtype=np.int64)
    marks[rows, starts] = run_length
    marks[rows, ends] = -run_length
    lengths = np.cumsum(marks, axis=1)[:, : m.shape[1]].astype(np.int32) * m
    return lengths if axis == 1 else lengths.T
