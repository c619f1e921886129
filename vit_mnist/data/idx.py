"""Read and write IDX files (the MNIST format), raw or gzip, with validation that names the bad file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from vit_mnist.errors import UserError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"Cannot read the IDX file {path}: {e}. Delete it and download or copy it again.") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Return the array stored in an IDX file of unsigned bytes; raise `UserError` if it is malformed."""
    path = Path(path)
    data = _read_bytes(path)
    fix = "Delete it and download or copy the original file again."
    if len(data) < 8:
        raise UserError(f"The IDX file {path} is truncated ({len(data)} bytes, too short for a header). {fix}")
    magic = int.from_bytes(data[:4], "big")
    if data[0:2] != b"\x00\x00" or data[2] != 0x08 or data[3] not in (1, 3):
        raise UserError(
            f"The file {path} is not an MNIST IDX file: its magic number is {magic} "
            f"(expected {LABELS_MAGIC} for labels or {IMAGES_MAGIC} for images). {fix}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"The IDX file {path} is truncated inside its header. {fix}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "longer than its header says"
        raise UserError(
            f"The IDX file {path} is {kind}: its header declares shape {shape}, i.e. {expected} bytes, "
            f"but it holds {len(data)} bytes. {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_images(path: str | Path, image_size: int) -> np.ndarray:
    """Read an images file and check it holds `image_size` x `image_size` images."""
    array = read_idx(path)
    if array.ndim != 3:
        raise UserError(f"{path} holds labels (1-D), not images: check which file is which.")
    if array.shape[1:] != (image_size, image_size):
        raise UserError(
            f"{path} holds images of {array.shape[1]}x{array.shape[2]} pixels, "
            f"expected {image_size}x{image_size}. Is it the right dataset?"
        )
    return array


def read_labels(path: str | Path, num_classes: int) -> np.ndarray:
    """Read a labels file and check every label is a class index below `num_classes`."""
    array = read_idx(path)
    if array.ndim != 1:
        raise UserError(f"{path} holds images (3-D), not labels: check which file is which.")
    if array.size and int(array.max()) >= num_classes:
        raise UserError(
            f"{path} has label {int(array.max())}, outside the range 0..{num_classes - 1} of this dataset. "
            "The file is corrupt or belongs to another dataset."
        )
    return array


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array (1-D labels or 3-D images) as IDX; gzip when the name ends in `.gz`."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, compresslevel=1) if path.suffix == ".gz" else payload)
    return path
