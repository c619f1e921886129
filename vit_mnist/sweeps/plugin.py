"""Hydra finds the Optuna sweeper (hydra_plugins/vit_mnist_sweeper) also in an editable install of the checkout."""

from __future__ import annotations


def register_sweeper() -> None:
    """Register the sweeper's plugin class with Hydra unless its plugin scan found it.

    A wheel puts it under site-packages/hydra_plugins, where the scan looks; an editable install (`make install`)
    reaches it through an import hook that the scan cannot list, so Hydra would not know the class."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.vit_mnist_sweeper.optuna_sweeper import OptunaSweeper

    plugins = Plugins.instance()
    if f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}" not in plugins.class_name_to_class:
        plugins.register(OptunaSweeper)
