"""Command: the corruption benchmark (MNIST-C and other handwriting's shifts) for one or more checkpoints.

    python -m vit_mnist.robustness ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt
    python -m vit_mnist.robustness 'ckpt_paths=[a/best.ckpt,b/best.ckpt]' 'names=[vit,cnn]' num_images=2000
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from vit_mnist.evaluation.robustness import robustness
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.runtime.runner import run_job


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="robustness")
def main(cfg: DictConfig) -> Any:
    """The first checkpoint's mCA, for sweeps over the benchmark's settings."""
    return run_job(cfg, robustness, objective=lambda summary: summary["models"][0]["mca"])


if __name__ == "__main__":
    main()
