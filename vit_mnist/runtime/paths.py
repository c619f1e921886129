"""Where things are: the package, the checkout (if any), the YAML configs, and the root of data/ and outputs/."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def find_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The repository folder when the package runs from a checkout (editable install, PYTHONPATH), else None."""
    root = package_dir.parent
    return root if (root / "pyproject.toml").is_file() and (root / "conf" / "train.yaml").is_file() else None


# The checkout's folder, or None for an installed package (wheel, `pip install .`).
PROJECT_ROOT = find_checkout()
# The folder holding the YAML configs: the checkout's conf/ (edits take effect at once), else the copy that the
# wheel ships as vit_mnist/conf (pyproject.toml maps conf/ to the package vit_mnist.conf).
CONFIG_DIR = PROJECT_ROOT / "conf" if PROJECT_ROOT else PACKAGE_DIR / "conf"


def project_root() -> str:
    """The folder holding outputs/ and data/: VIT_MNIST_ROOT, else the checkout, else the working directory.

    An installed package never writes next to itself: without a checkout, runs go to ./outputs.
    """
    return os.environ.get("VIT_MNIST_ROOT") or str(PROJECT_ROOT or Path.cwd())
