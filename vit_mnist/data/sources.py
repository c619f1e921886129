"""Where the MNIST-family datasets live: their files, checksums, mirrors, classes and pixel statistics."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from vit_mnist.errors import UserError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """What identifies one dataset on disk and on the web."""

    name: str
    folder: str
    classes: tuple[str, ...]
    mean: float
    std: float
    mirrors: tuple[str, ...]
    md5: dict[str, str] = field(default_factory=dict)  # of the official .gz files
    image_size: int = 28
    # handwritten digits, ink on paper: users' images get MNIST's layout and the default background normalisation,
    # and the robustness benchmark scores digits from outside the dataset
    handwritten: bool = False

    @property
    def files(self) -> list[str]:
        return [f for pair in SPLIT_FILES.values() for f in pair]


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="MNIST",
        classes=tuple(str(i) for i in range(10)),
        mean=0.1307,
        std=0.3081,
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        handwritten=True,
        md5={
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        folder="FashionMNIST",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        mean=0.2860,
        std=0.3530,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


def is_handwritten(name: str) -> bool:
    """Whether dataset `name` (a checkpoint's or config's `data.name`) holds handwritten digits."""
    spec = DATASETS.get(str(name))
    return spec is not None and spec.handwritten


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`, or a `UserError` listing the known ones."""
    if name not in DATASETS:
        raise UserError(
            f"Unknown dataset data.name={name!r}. Known datasets: {sorted(DATASETS)}; "
            f"choose one with `data=<name>` (e.g. `data=fashion_mnist`)."
        )
    return DATASETS[name]


def find_file(raw_dir: Path, stem: str) -> Path | None:
    """The raw or gzipped copy of `stem` in `raw_dir`, preferring the raw one."""
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _download(url: str, target: Path, md5: str | None, timeout: float) -> None:
    # Download into a temporary file and move it into place only once verified: never a half-written file.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
    if md5 and _md5(tmp_path) != md5:
        tmp_path.unlink(missing_ok=True)
        raise OSError(f"checksum mismatch for {url}")
    tmp_path.replace(target)


def ensure_files(spec: DatasetSpec, data_dir: str | Path, download: bool = True, timeout: float = 10.0) -> dict[str, Path]:
    """Paths of the four IDX files, downloading missing ones when allowed; a clear `UserError` otherwise."""
    raw_dir = Path(data_dir).expanduser().resolve() / spec.folder / "raw"
    found = {stem: find_file(raw_dir, stem) for stem in spec.files}
    missing = [stem for stem, path in found.items() if path is None]
    errors = []
    if missing and download:
        try:
            raw_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            errors.append(f"cannot create {raw_dir}: {e}")
        for stem in list(missing) if not errors else []:
            for mirror in spec.mirrors:
                target = raw_dir / f"{stem}.gz"
                try:
                    _download(f"{mirror}{stem}.gz", target, spec.md5.get(stem), timeout)
                except (OSError, ValueError) as e:  # URLError, timeouts and checksum errors are OSErrors
                    errors.append(f"{mirror}{stem}.gz: {getattr(e, 'reason', e)}")
                    continue
                found[stem] = target
                missing.remove(stem)
                break
    if missing:
        tried = f" Downloading failed ({errors[0]})." if errors else " Downloading is off (data.download=false)."
        raise UserError(
            f"The {spec.name} dataset is missing from {raw_dir}: expected the files "
            f"{', '.join(missing)} (raw IDX or .gz).{tried} Copy the four files "
            f"{', '.join(spec.files)} into that folder, or point the project at a folder that has "
            f"{spec.folder}/raw/ in it with the environment variable VIT_MNIST_DATA_DIR=/path/to/data "
            f"or the override paths.data_dir=/path/to/data."
        )
    return found  # type: ignore[return-value]
