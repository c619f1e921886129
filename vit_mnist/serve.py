"""Command: the digit-drawing web app and its JSON API on 127.0.0.1 (`make serve`).

    python -m vit_mnist.serve ckpt_path=outputs/<run>/checkpoints/best.ckpt port=8000
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vit_mnist.inference.web import serve
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.runtime.runner import run_job


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    run_job(cfg, serve)


if __name__ == "__main__":
    main()
