"""Command: training and inference images/s of our ViT (or CNN) on this device, beside Hugging Face's ViT.

    python -m vit_mnist.bench                       # the seed-size model at batch 64 and 256
    python -m vit_mnist.bench model.compile=true steps=50 'batch_sizes=[128]'
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vit_mnist.benchmark.throughput import bench
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.runtime.runner import run_job


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
def main(cfg: DictConfig) -> None:
    run_job(cfg, bench)


if __name__ == "__main__":
    main()
