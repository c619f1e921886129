"""Command: classify image files with a trained checkpoint; a table for people, JSON for programs.

    python -m vit_mnist.predict ckpt_path=outputs/<run>/checkpoints/best.ckpt 'images=[digit.png,scans/]'
Exit status: 0, 1 when some files could not be read, 2 for a mistake in the command.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from vit_mnist.inference.files import predict
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.runtime.runner import run_job


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    sys.exit(run_job(cfg, predict, objective=lambda result: result["status"]))


if __name__ == "__main__":
    main()
