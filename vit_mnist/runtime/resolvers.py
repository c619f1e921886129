"""The OmegaConf resolvers the YAML configs use (`${vit_mnist.root:}` ...), registered once on import."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from vit_mnist.data.sources import is_handwritten
from vit_mnist.runtime.cluster import launcher_gpus, launcher_tasks
from vit_mnist.runtime.hardware import fastest_precision
from vit_mnist.runtime.paths import project_root


def _abspath(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def input_norm_for(dataset: str) -> str:
    """The default model.input_norm for a dataset: tophat for handwritten digits, none otherwise.

    A user's digit may come on grey or unevenly lit paper, which the weight-free background normalisation takes
    away; garments fill their image, and it would take them away.
    """
    return "tophat" if is_handwritten(dataset) else "none"


def is_set(value: object) -> bool:
    """Whether a setting is given: not null and not empty (model.distill_token follows distill.teacher)."""
    return value not in (None, "", "null", "None")


RESOLVERS = {"vit_mnist.is_set": is_set, "vit_mnist.root": project_root, "vit_mnist.abspath": _abspath,
             "vit_mnist.input_norm_for": input_norm_for, "vit_mnist.fastest_precision": fastest_precision,
             # hydra.launcher.tasks_per_node and gpus_per_node from trainer.devices and trainer.accelerator
             "vit_mnist.launcher_tasks": launcher_tasks, "vit_mnist.launcher_gpus": launcher_gpus}


def register_resolvers() -> None:
    """Register every resolver that is not registered yet (idempotent)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)

