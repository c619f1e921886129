"""Command: export a checkpoint to ONNX (or TorchScript), checked against PyTorch before the file is kept.

    python -m vit_mnist.export ckpt_path=outputs/<run>/checkpoints/best.ckpt [format=torchscript] [output=m.onnx]
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vit_mnist.inference.export import export_from_config
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.runtime.runner import run_job


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    run_job(cfg, export_from_config)


if __name__ == "__main__":
    main()
