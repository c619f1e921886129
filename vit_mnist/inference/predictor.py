"""Load a trained checkpoint for inference and turn preprocessed images into class probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vit_mnist.data.preprocess import ImageSource, preprocess
from vit_mnist.data.sources import is_handwritten
from vit_mnist.errors import UserError
from vit_mnist.training.checkpoints import load_module
from vit_mnist.training.module import ViTClassifier


class Predictor:
    """A checkpoint's network (ViT or CNN) with its class names and normalisation: images in, probabilities out."""

    def __init__(self, module: ViTClassifier, source: str = ""):
        self.net = module.net.eval()
        self.class_names: list[str] = list(module.class_names)
        normalize = module.hparams.get("normalize") or {}
        if "mean" not in normalize or "std" not in normalize:
            raise UserError(
                f"The checkpoint {source} records no normalisation constants (hparams.normalize); it was not "
                "written by this version's `python -m vit_mnist.train`. Retrain, or give another checkpoint."
            )
        self.mean, self.std = float(normalize["mean"]), float(normalize["std"])
        self.dataset = str(module.hparams.get("dataset", ""))
        self.handwritten = is_handwritten(self.dataset)  # users' images get MNIST's layout
        self.arch = module.arch  # "vit" or "cnn": which network the checkpoint holds
        self.source = str(source)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None) -> Predictor:
        return cls(load_module(path), source=str(path))

    def prepare(self, image: ImageSource, layout: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """An image -> (normalised float32 (1, 28, 28), the uint8 (28, 28) the model sees)."""
        return preprocess(image, self.mean, self.std, layout, self.handwritten)

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 (B, 1, 28, 28) -> softmax probabilities (B, num_classes) as float64."""
        logits = self.net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return logits.double().softmax(dim=-1).numpy()
