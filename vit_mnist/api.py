"""The Python API: load a trained checkpoint (ViT or CNN) and classify images from a program, as `predict` does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vit_mnist.data.preprocess import ImageSource, check_layout
from vit_mnist.errors import UserError
from vit_mnist.inference.predictor import Predictor

__all__ = ["Classifier", "Predictions", "load_model"]


@dataclass(frozen=True)
class Predictions:
    """The model's answer for N images, in the order given."""

    labels: np.ndarray  # int64 (N,): the most probable class of each image
    probabilities: np.ndarray  # float64 (N, classes): calibrated softmax(logits / temperature); row i sums to 1
    class_names: list[str]  # the model's classes; label k is class_names[k]
    # "confident" (the answer stands), "unsure" (a digit, but two classes are close) or "out_of_domain" (not
    # one of the model's kind of images at all: a letter, a scribble, a photo of something else)
    verdicts: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The class name of each image's label."""
        return [self.class_names[k] for k in self.labels]

    def __len__(self) -> int:
        return len(self.labels)


class Classifier:
    """A trained checkpoint ready to classify images: `Classifier.load(path).predict(images)`."""

    def __init__(self, predictor: Predictor):
        self._predictor = predictor

    @classmethod
    def load(cls, ckpt_path: str | Path) -> Classifier:
        """The model in a checkpoint written by `vit-mnist train` (any `model=`), on the CPU."""
        return cls(Predictor.from_checkpoint(ckpt_path))

    @property
    def classes(self) -> list[str]:
        """The class names, indexed by label."""
        return list(self._predictor.class_names)

    @property
    def dataset(self) -> str:
        """The dataset the checkpoint was trained on, e.g. "mnist" or "fashion_mnist"."""
        return self._predictor.dataset

    @property
    def arch(self) -> str:
        """The network in the checkpoint: "vit" or "cnn"."""
        return self._predictor.arch

    @property
    def temperature(self) -> float:
        """The checkpoint's fitted temperature: probabilities are softmax(logits / temperature) (1: not calibrated)."""
        return self._predictor.temperature

    def __repr__(self) -> str:
        return f"Classifier(arch={self.arch!r}, classes={len(self.classes)}, checkpoint={self._predictor.source!r})"

    def predict(self, images: ImageSource | Sequence[ImageSource], layout: str = "auto",
                batch_size: int = 256) -> Predictions:
        """Labels and probabilities for one image or many, preprocessed exactly as `vit-mnist predict` does.

        `images`: a file path, a PIL image, encoded image bytes or a pixel array (uint8 0-255, or floats 0-1),
        or a list of these; an array of shape (N, H, W) or (N, 1, H, W) is a batch of N grayscale images.
        `layout`: "auto" takes 28x28 images to be MNIST-format already (white on black, centred); "full" runs
        MNIST's preprocessing (invert, crop, fit 20x20, centre by mass) on every image. A `UserError` names
        the first image that cannot be read.
        """
        check_layout(layout)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size={batch_size!r} must be a positive whole number, e.g. 256.")
        items = _as_list(images)
        if not items:
            raise UserError("No images given: pass a file path, a PIL image, a pixel array or a list of them.")
        inputs = []
        for i, image in enumerate(items):
            try:
                inputs.append(self._predictor.prepare(image, layout)[0])
            except UserError as e:
                where = f"image {i} ({image})" if isinstance(image, (str, Path)) else f"image {i}"
                raise UserError(f"{where}: {e}" if len(items) > 1 else str(e)) from e
        batch = np.stack(inputs)
        # In slices, so that a large array does not need one huge activation tensor.
        answers = [self._predictor.answer(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]
        probabilities = np.concatenate([a.probabilities for a in answers])
        return Predictions(labels=probabilities.argmax(axis=1), probabilities=probabilities,
                           class_names=self.classes, verdicts=[v for a in answers for v in a.verdicts])


def load_model(ckpt_path: str | Path) -> Classifier:
    """The model in a training checkpoint (ViT or `model=cnn`), ready for `.predict(images)`."""
    return Classifier.load(ckpt_path)


def _as_list(images: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    """One image or many -> a list of single images; a (N, H, W) or (N, 1, H, W) array is N images."""
    if isinstance(images, torch.Tensor):  # e.g. the datasets' uint8 (N, 1, 28, 28) tensors
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        array = images
        if array.ndim == 4 and array.shape[1] == 1:  # (N, 1, H, W), as the datasets store images
            return list(array[:, 0])
        if array.ndim == 4 or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):  # a batch
            return list(array)
        return [array]  # (H, W) or one colour image (H, W, 1 | 3 | 4)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]
