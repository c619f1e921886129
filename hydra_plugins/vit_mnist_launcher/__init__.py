"""Hydra's entry to this project's submitit launchers (vit_mnist.runtime.launcher): Hydra loads a launcher only
from the `hydra_plugins` package, and this one only when the `sweep` extra (hydra-submitit-launcher) is there."""

from __future__ import annotations

try:
    from vit_mnist.runtime import launcher as _launcher
except ImportError:  # no hydra-submitit-launcher: no submitit launcher to offer
    _launcher = None  # type: ignore[assignment]

if _launcher is not None:

    class LocalLauncher(_launcher.SurvivingLauncher):
        """`hydra/launcher=submitit_local`: each job in processes of its own on this machine."""

        _EXECUTOR = "local"

    class SlurmLauncher(_launcher.SurvivingLauncher):
        """`hydra/launcher=slurm`: each job of the sweep a SLURM job through submitit."""

        _EXECUTOR = "slurm"
