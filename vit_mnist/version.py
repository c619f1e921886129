"""The installed distribution's version, so that it cannot drift from pyproject.toml."""

from importlib import metadata

try:
    __version__ = metadata.version("vit-mnist")
except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"
