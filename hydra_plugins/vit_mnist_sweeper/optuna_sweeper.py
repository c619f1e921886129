"""`hydra/sweeper=optuna`: the Hydra plugin class, a thin shell over vit_mnist.sweeps.sweeper.StudySweeper."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """An Optuna study over Optuna's ask/tell interface, its trials run by whichever Hydra launcher is configured
    (conf/hydra/sweeper/optuna.yaml; docs/scaling.md#optuna-search)."""

    def __init__(self, **config: Any) -> None:
        # imported here, not at the top: Hydra imports every hydra_plugins module at each start, Optuna is slow to load
        from vit_mnist.sweeps.sweeper import StudySweeper

        self._sweeper = StudySweeper(**config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._sweeper.sweep(arguments)
