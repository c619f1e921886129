"""Small things the tests build in milliseconds: digit-like images, an untrained tiny module and its checkpoint, the
corruption table, the benchmark's tiny settings (shared by several test modules, which never import each other)."""

from __future__ import annotations

from pathlib import Path

import lightning
import torch
from omegaconf import OmegaConf

from vit_mnist.data.image_ops import draw_segments, stroke_width
from vit_mnist.data.sources import get_spec
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.training.module import ViTClassifier

# the packaged corruption table (conf/corruptions/default.yaml) as plain data
TABLE = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "corruptions" / "default.yaml"))
# the throughput benchmark at its smallest: a one-block ViT, two timed steps
TINY_BENCH = ["model.hidden_dim=32", "model.depth=1", "model.heads=2", "model.mlp_dim=64", "batch_sizes=[8]",
              "steps=2", "warmup=1", "repeats=1", "matmul_size=128", "device=cpu"]


def digit_like(n: int = 48, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 1, 28, 28) images of two or three pen strokes inside the central 20x20 box, as MNIST digits sit."""
    g = torch.Generator().manual_seed(seed)
    points = 4 + torch.rand(n, 3, 2, 2, generator=g) * 20  # (n, strokes, start/end, (col, row))
    x = draw_segments((n, 1, 28, 28), points[:, :, 0], points[:, :, 1])
    x = stroke_width(x, 0.7)
    return (x * 255).round().to(torch.uint8)


def tiny_module(seed: int = 0) -> ViTClassifier:
    """An untrained one-block ViT module for MNIST, seeded."""
    torch.manual_seed(seed)
    spec = get_spec("mnist")
    model = {"image_size": 28, "in_channels": 1, "num_classes": 10, "patch_size": 7, "hidden_dim": 32, "depth": 1,
             "heads": 2, "mlp_dim": 64}
    return ViTClassifier(model=model, class_names=list(spec.classes), normalize={"mean": spec.mean, "std": spec.std})


def untrained_checkpoint(path: Path, dataset: str, num_classes: int = 10) -> Path:
    """A checkpoint as training writes it, of an untrained tiny model for `dataset`, made in milliseconds."""
    spec = get_spec(dataset)
    model = {"image_size": 28, "in_channels": 1, "num_classes": num_classes, "patch_size": 7, "hidden_dim": 32,
             "depth": 1, "heads": 2, "mlp_dim": 64}
    module = ViTClassifier(model=model, class_names=list(spec.classes)[:num_classes],
                           normalize={"mean": spec.mean, "std": spec.std}, dataset=dataset)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0,
                "global_step": 0, "pytorch-lightning_version": lightning.__version__}, path)
    return path
