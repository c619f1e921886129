"""Batched on-device augmentation: one random affine warp (rotation, translation, scale, flip) per image."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vit_mnist.errors import UserError

INTERPOLATIONS = ("bilinear", "nearest")  # the grid_sample modes that suit uint8 digit images


@dataclass
class AugmentConfig:
    """Ranges of the random affine transform; all zero/False means no augmentation."""

    rotation: float = 10.0  # degrees, uniform in [-rotation, rotation]
    translate: float = 0.1  # fraction of the image size, uniform in [-translate, translate] per axis
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range
    hflip: bool = False  # mirror half of the images (changes digit identity: off for digits by default)
    # resampling of the warped image: "bilinear" (smooth) or "nearest" (keeps strokes crisp, torchvision's default)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.rotation) <= 180.0:
            raise UserError(f"data.augment.rotation={self.rotation} must be in [0, 180]: the largest rotation in "
                            "degrees, either way (e.g. 10; 0 turns rotation off).")
        if not 0.0 <= float(self.translate) < 1.0:
            raise UserError(f"data.augment.translate={self.translate} must be in [0, 1): the largest shift as a "
                            "fraction of the image size (e.g. 0.1; 0 turns it off).")
        scale = [self.scale] if isinstance(self.scale, (int, float, str)) else list(self.scale)
        if len(scale) != 2 or not 0.0 < float(scale[0]) <= float(scale[1]):
            raise UserError(f"data.augment.scale={scale} must be two zoom factors [low, high] with 0 < low <= high, "
                            "e.g. [0.9,1.1]; [1.0,1.0] turns zoom off.")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(
                f"data.augment.interpolation={self.interpolation!r} is not a resampling mode this project knows: "
                f"use one of {' or '.join(INTERPOLATIONS)}."
            )

    @property
    def enabled(self) -> bool:
        return bool(self.rotation or self.translate or tuple(self.scale) != (1.0, 1.0) or self.hflip)


def random_affine(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Warp a float batch (B, C, H, W) with a random affine transform per image; background stays 0."""
    if not cfg.enabled:
        return images
    B, device = images.shape[0], images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(B, device=device, generator=generator) * (high - low) + low

    angle = uniform(-cfg.rotation, cfg.rotation) * (math.pi / 180.0)
    scale = uniform(float(cfg.scale[0]), float(cfg.scale[1]))
    # affine_grid maps output coords to input coords, so the inverse zoom is 1/scale.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    flip = torch.ones(B, device=device)
    if cfg.hflip:
        flip = torch.where(torch.rand(B, device=device, generator=generator) < 0.5, -1.0, 1.0)
    # translate is in [-1, 1] normalised coords: a fraction f of the image is 2f.
    tx, ty = uniform(-2 * cfg.translate, 2 * cfg.translate), uniform(-2 * cfg.translate, 2 * cfg.translate)
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], dim=1), torch.stack([sin * flip, cos, ty], dim=1)], dim=1
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=cfg.interpolation, padding_mode="zeros", align_corners=False)
