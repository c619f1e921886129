"""The crop warmup: the first part of training on the images' central pixels only, where the digit is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from vit_mnist.errors import UserError


@dataclass(frozen=True)
class CropWarmup:
    """`size`: the side of the central square the training images are cut to (0: off); `fraction`: the share of
    the run's optimizer steps that train on it, the first ones. MNIST's digits sit in the central 20x20 pixels of
    their 28x28 images, so a 20-pixel crop keeps the digit and half the pixels: a patch-4 ViT then reads 25 tokens
    instead of 49 and a step costs about two thirds (docs/results.md#fast). The rest of the run trains on whole
    images, which validation, the test and every later use read."""

    size: int = 0
    fraction: float = 0.5

    def check(self, image_size: int, token_pixels: int) -> None:
        """`UserError` naming `data.crop_warmup.*` when the crop cannot be read by a network whose tokens (or, for a
        CNN, pixels) are `token_pixels` wide: the margin cut on each side must be a whole number of tokens."""
        if self.size == 0:
            return
        whole = isinstance(self.size, int) and not isinstance(self.size, bool)
        if not whole or not 0 < self.size < image_size or (image_size - self.size) % (2 * token_pixels):
            raise UserError(
                f"data.crop_warmup.size={self.size!r} cannot cut {image_size}x{image_size} images for this network: "
                f"the crop must be a whole number of pixels, smaller than the image, that leaves the same whole "
                f"number of {token_pixels}-pixel tokens on every side (a margin divisible by {2 * token_pixels}; e.g. "
                f"{image_size - 2 * token_pixels}), so that each token keeps its place. Use 0 to train on whole images."
            )
        number = isinstance(self.fraction, (int, float)) and not isinstance(self.fraction, bool)
        if not number or not 0.0 < self.fraction <= 1.0:
            raise UserError(
                f"data.crop_warmup.fraction={self.fraction} must lie in (0, 1]: the share of the run's optimizer "
                f"steps that train on the crop (e.g. 0.5: the first half)."
            )

    def applies(self, trainer: Any) -> bool:
        """Whether this training step is in the warmup: the trainer's step count within the first `fraction`."""
        if self.size == 0:
            return False
        total = trainer.estimated_stepping_batches  # every epoch's optimizer steps, over all devices' shares
        return math.isfinite(total) and trainer.global_step < self.fraction * total

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """The central `size` x `size` pixels of a (B, C, H, W) batch."""
        top, left = (images.shape[-2] - self.size) // 2, (images.shape[-1] - self.size) // 2
        return images[..., top:top + self.size, left:left + self.size]


def crop_warmup_from(options: Mapping[str, Any] | None) -> CropWarmup:
    """`data.crop_warmup` as a `CropWarmup` (None or empty: off); `UserError` for a key it does not have."""
    try:
        return CropWarmup(**(options or {}))
    except TypeError:
        raise UserError(f"data.crop_warmup takes `size` and `fraction`; it was given {sorted(options or {})}. "
                        f"E.g. data.crop_warmup.size=20 data.crop_warmup.fraction=0.5.") from None
