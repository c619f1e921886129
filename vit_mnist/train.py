"""Command: train a model (the ViT, or model=cnn), test its best checkpoint, write the run's reports.

    python -m vit_mnist.train model.depth=6 trainer.max_epochs=20
    python -m vit_mnist.train -m model.patch_size=4,7 model.depth=2,4    # a sweep
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.runtime.runner import run_job
from vit_mnist.sweeps.plugin import register_sweeper
from vit_mnist.training.fit import train

register_sweeper()  # hparams_search=optuna's sweeper, also where an editable install hides it from Hydra's scan


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> Any:
    """The job's val/acc_best, the value sweepers (Optuna) optimise."""
    return run_job(cfg, train, objective="val/acc_best")


if __name__ == "__main__":
    main()
