"""Command: evaluate a checkpoint on the test split (or its own validation split) and write its reports.

    python -m vit_mnist.evaluate ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt [split=val] [tta=true]
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from vit_mnist.evaluation.evaluate import evaluate
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.runtime.runner import run_job


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> Any:
    """The split's accuracy, for sweeps over evaluation settings."""
    return run_job(cfg, evaluate, objective=lambda metrics: metrics[f"{metrics['split']}/acc"])


if __name__ == "__main__":
    main()
