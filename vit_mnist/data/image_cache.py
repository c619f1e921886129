"""A disk cache of generated non-digit images (joblib.Memory), keyed by their arguments and the code that draws them."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from joblib import Memory

from vit_mnist.data.non_digits import make_non_digits
from vit_mnist.data.sources import find_file, get_spec

# what draws the images besides vit_mnist.data's own code: a new version may draw them differently
LIBRARIES = ("numpy", "scipy", "pillow", "matplotlib", "torch")


@functools.lru_cache(maxsize=1)
def code_stamp() -> str:
    """A digest of vit_mnist.data's sources and the drawing libraries' versions: images cached under another are
    made again."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    for name in LIBRARIES:
        digest.update(f"{name}={metadata.version(name)}".encode())
    return digest.hexdigest()


def _files_stamp(name: str, data_dir: str | None) -> tuple:
    """The name, size and time of the files a set of another dataset's images is read from (none for drawings)."""
    if name not in ("fashion", "digits") or data_dir is None:
        return ()
    spec = get_spec("fashion_mnist" if name == "fashion" else "mnist")
    found = (find_file(Path(data_dir).expanduser().resolve() / spec.folder / "raw", stem) for stem in spec.files)
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in found if p is not None)


def _make(name: str, count: int, seed: int, split: str, data_dir: str | None, stamp: tuple) -> torch.Tensor:
    """make_non_digits; `stamp` only keys the cache."""
    return make_non_digits(name, count, seed, split, data_dir, False)


def cached_non_digits(cache_dir: str | Path | None) -> Callable[..., torch.Tensor]:
    """`make(name, count, seed, split, data_dir)`: make_non_digits's images, read from `cache_dir` when made
    there before with the same arguments, code and libraries (None: no cache, made every time)."""
    if cache_dir is None:
        return lambda name, count, seed, split, data_dir: make_non_digits(name, count, seed, split, data_dir, False)
    cached = Memory(Path(cache_dir).expanduser(), verbose=0).cache(_make)

    def make(name: str, count: int, seed: int, split: str, data_dir: str | None) -> torch.Tensor:
        return cached(name, count, seed, split, data_dir, (code_stamp(), _files_stamp(name, data_dir)))

    return make
