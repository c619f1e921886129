"""Command: fit the temperature and the out-of-domain detector into an existing checkpoint, so that it gives verdicts.

    python -m vit_mnist.calibrate ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt [ood_score=energy]
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from vit_mnist.evaluation.calibrate import calibrate_checkpoint
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.runtime.runner import run_job


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="calibrate")
def main(cfg: DictConfig) -> Any:
    """The fitted temperature (1.0 when there was nothing to fit on)."""
    return run_job(cfg, calibrate_checkpoint, objective=lambda metrics: metrics.get("calibration/temperature", 1.0))


if __name__ == "__main__":
    main()
