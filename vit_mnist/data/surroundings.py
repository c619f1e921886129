"""What lies around the page in a photo (a table, a scanner's margin) taken out of a digit's ink."""

# A phone photo of a digit on paper often shows the table beside the page, a scan the lid's dark margin: solid and
# dark along the photo's edge. Laid out with the ink it is the largest stroke, and the crop takes it in with the
# digit (test digits photographed with a table along one side were read 15% of the time, and four in five of the
# few "confident" answers were wrong). Surroundings are solid (they outlast an erosion that thin lines, a grid's or
# a ruling's, do not) and run unbroken along nearly the whole of one of the photo's sides, as the page's edge
# crosses the photo; the pieces of ink that hold them are taken out whole, only when the writing, the other pieces,
# keeps clear of every edge. A digit that reaches the edge (cropped tightly, cut by the photo, or a stroke drawn
# along a canvas's edge for part of it) stays as drawn, with whatever touches the edge beside it.

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vit_mnist.data.rulings import MIN_LEFT, writing_pieces

EDGE_CONTACT = 0.9  # of a side's length: the page's edge crosses the photo; a stroke along the edge is shorter
SOLID = 0.01  # of the image's shorter side: surroundings are more than twice this thick (lines are thinner)
CLEAR = 0.01  # of the image's shorter side: the writing keeps at least this far from every edge
MIN_PHOTO = 100  # pixels: smaller images are scans of one digit or small drawings, not photos of a page


def remove_surroundings(ink: np.ndarray, threshold: float) -> np.ndarray:
    """White-on-black `ink` (H, W) without the pieces that hold a solid part running unbroken along the photo's
    edge for EDGE_CONTACT of a side (and their blurred edges), when the rest of the ink above `threshold`, at least
    MIN_LEFT of it, keeps CLEAR of every edge. Returns `ink` itself (the same object) when nothing is taken out."""
    height, width = ink.shape
    if min(height, width) < MIN_PHOTO:
        return ink
    mask = ink > threshold / 2  # a shadow's or a table's faint edge is its own
    edges = (mask[0], mask[-1], mask[:, 0], mask[:, -1])
    if not any(len(_long_runs(edge.astype(np.int32), EDGE_CONTACT * len(edge))) for edge in edges):
        return ink  # nothing runs along an edge (most photos): no labelling needed
    depth = max(2, round(SOLID * min(height, width)))
    # solid parts: what outlasts `depth` erosions (the photo's outside counts as ink, so a band along the edge
    # stays there), grown back within the ink
    solid = ndimage.binary_dilation(ndimage.binary_erosion(mask, iterations=depth, border_value=1),
                                    iterations=depth) & mask
    pieces, count = ndimage.label(solid, structure=np.ones((3, 3)))
    around = np.zeros(count + 1, dtype=bool)
    for side in (pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1]):
        around[_long_runs(side, EDGE_CONTACT * len(side))] = True
    if not around.any():
        return ink
    # the whole of each piece of ink that holds such a part (a shape's thin tips are the shape's, not writing)
    whole, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    taken = ndimage.binary_dilation(np.isin(whole, np.unique(whole[around[pieces]])), iterations=2)
    writing = writing_pieces(~taken & (ink > threshold))
    # specks are not a digit: what is left must be writing (a page turned into ink leaves only its noise)
    if writing.sum() < MIN_LEFT * (ink > threshold).sum():
        return ink
    clear = max(1, round(CLEAR * min(height, width)))
    if any(part.any() for part in (writing[:clear], writing[-clear:], writing[:, :clear], writing[:, -clear:])):
        return ink
    return np.where(taken, 0.0, ink)


def _long_runs(side: np.ndarray, length: float) -> np.ndarray:
    """The labels that run unbroken along `side` (an edge's labels) for at least `length` pixels: a table or a
    margin lies along the edge; a drawing touches it here and there."""
    starts = np.flatnonzero(np.diff(side, prepend=-1))
    runs = np.diff(starts, append=len(side))
    labels = side[starts]
    return np.unique(labels[(runs >= length) & (labels > 0)])
