"""Batched on-device augmentation: a random affine warp per image, and the variations of other people's handwriting."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vit_mnist.data.image_ops import (
    elastic_warp,
    gaussian_blur,
    resample_resolution,
    stroke_width,
)
from vit_mnist.data.writer_styles import writer_styles
from vit_mnist.errors import UserError

INTERPOLATIONS = ("bilinear", "nearest")  # the grid_sample modes that suit uint8 digit images


@dataclass
class AugmentConfig:
    """Ranges of the random affine transform; all zero/False means no augmentation."""

    rotation: float = 10.0  # degrees, uniform in [-rotation, rotation]
    translate: float = 0.1  # fraction of the image size, uniform in [-translate, translate] per axis
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range
    hflip: bool = False  # mirror half of the images (changes digit identity: off for digits by default)
    # width-to-height ratio change, area kept: the ratio is multiplied by a log-uniform factor in
    # [1/(1+aspect), 1+aspect] (e.g. 1.0: narrow to wide 1s and 7s, as writers and box-filling scanners make them)
    aspect: float = 0.0
    # resampling of the warped image: "bilinear" (smooth) or "nearest" (keeps strokes crisp, torchvision's default)
    interpolation: str = "bilinear"
    # Handwriting variation, each off at 0 (see `handwriting_variation`):
    elastic: float = 0.0  # elastic distortion (Simard et al., 2003): largest alpha in pixels, e.g. 20
    elastic_sigma: float = 4.0  # smoothness of the elastic displacement field, pixels
    stroke: float = 0.0  # stroke width change, pixels per side, uniform in [-stroke, stroke], e.g. 1.0
    blur: float = 0.0  # Gaussian blur of half the images, sigma uniform in [0, blur] pixels, e.g. 1.0
    min_resolution: int = 0  # half the images scanned at a size uniform in [min_resolution, 27], e.g. 10
    noise: float = 0.0  # additive Gaussian noise, std uniform in [0, noise] (pixels in [0, 1]), e.g. 0.1
    # a smooth grey veil over half the images (haze, a dim photo): strength uniform in [0, haze], e.g. 0.5
    haze: float = 0.0
    erasing: float = 0.0  # probability of erasing one random rectangle (2-15% of the image), e.g. 0.25
    handwriting_p: float = 1.0  # the share of images that get the handwriting variation above (the rest: none)
    # continental conventions (vit_mnist.data.writer_styles): the probability that a training 1 gets a flag (half of
    # those a foot too) and a 7 a bar through its stem, e.g. 0.5; needs the labels, so training batches only
    styles: float = 0.0

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

        for key, high in (("aspect", 3.0), ("elastic", 200.0), ("stroke", 3.0), ("blur", 5.0), ("noise", 1.0),
                          ("haze", 5.0), ("erasing", 1.0), ("styles", 1.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= high:
                raise UserError(f"data.augment.{key}={value!r} must be a number in [0, {high:g}]; 0 turns it off "
                                f"({_HINTS[key]}).")
        if isinstance(self.elastic_sigma, bool) or not isinstance(self.elastic_sigma, (int, float)) \
                or not 0.5 <= self.elastic_sigma <= 20:
            raise UserError(f"data.augment.elastic_sigma={self.elastic_sigma!r} must be in [0.5, 20] pixels "
                            "(the smoothness of the elastic field; Simard et al. use 4).")
        p = self.handwriting_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise UserError(f"data.augment.handwriting_p={p!r} must be in (0, 1]: the share of training images that "
                            "get the handwriting variation (1.0: all of them; turn a variation off with its own key).")
        res = self.min_resolution
        if isinstance(res, bool) or not isinstance(res, int) or not (res == 0 or 4 <= res <= 27):
            raise UserError(f"data.augment.min_resolution={res!r} must be 0 (off) or a whole number of pixels in "
                            "[4, 27]: half the training images are then scanned at a random size from it to 27 and "
                            "enlarged back (e.g. 10).")

    @property
    def affine(self) -> bool:
        return bool(self.rotation or self.translate or tuple(self.scale) != (1.0, 1.0) or self.hflip or self.aspect)

    @property
    def handwriting(self) -> bool:
        return bool(self.elastic or self.stroke or self.blur or self.min_resolution or self.noise or self.haze
                    or self.erasing)

    @property
    def enabled(self) -> bool:
        return self.affine or self.handwriting or bool(self.styles)


_HINTS = {
    "aspect": "the largest change of an image's width-to-height ratio, 1.0 allowing half to twice",
    "elastic": "the largest displacement-field scale alpha in pixels, e.g. 20",
    "stroke": "the largest change of stroke width in pixels per side, e.g. 1.0",
    "blur": "the largest Gaussian blur sigma in pixels, e.g. 1.0",
    "noise": "the largest standard deviation of added noise, pixels being in [0, 1], e.g. 0.1",
    "haze": "the largest strength of a smooth grey veil, 1.0 as bright as the strokes, e.g. 0.5",
    "erasing": "the probability of erasing one rectangle of an image, e.g. 0.25",
    "styles": "the probability that a training 1 is drawn flagged and a 7 crossed, e.g. 0.5",
}


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None,
            labels: torch.Tensor | None = None) -> torch.Tensor:
    """All of the training augmentation of a float batch (B, C, H, W) in [0, 1]: writing styles (where the labels
    are given), handwriting variation, then the random affine warp."""
    if cfg.styles and labels is not None:
        images = writer_styles(images, labels, float(cfg.styles), generator)
    if cfg.handwriting:
        varied = handwriting_variation(images, cfg, generator)
        if cfg.handwriting_p < 1.0:  # the rest of the batch stays as drawn, so clean digits are still learnt
            keep = torch.rand(images.shape[0], device=images.device, generator=generator) >= cfg.handwriting_p
            varied = torch.where(keep.view(-1, 1, 1, 1), images, varied)
        images = varied
    return random_affine(images, cfg, generator)


def handwriting_variation(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
                          ) -> torch.Tensor:
    """What differs between writers, pens and scanners, each drawn per image: stroke width, elastic distortion
    of the shape, scan resolution, blur, a veil of haze, sensor noise, and an erased part (a broken or occluded stroke).

    The building blocks (vit_mnist.data.image_ops) are the corruption benchmark's too, drawn here from ranges; the
    benchmark marks the corruptions that resemble the augmentations a model was trained with as "seen".
    """
    x = images.clone()  # the caller's batch stays as it was (handwriting_p keeps part of it)
    B, _, H, W = x.shape
    device = x.device

    def uniform(low: float, high: float, n: int = B) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) * (high - low) + low

    def half() -> torch.Tensor:
        return torch.rand(B, device=device, generator=generator) < 0.5

    if cfg.stroke:
        x = stroke_width(x, uniform(-cfg.stroke, cfg.stroke))
    if cfg.elastic:
        x = elastic_warp(x, uniform(0.0, cfg.elastic), float(cfg.elastic_sigma), generator)
    if cfg.min_resolution:
        sizes = torch.randint(cfg.min_resolution, min(H, W), (B,), device=device, generator=generator)
        sizes = torch.where(half(), sizes, torch.full_like(sizes, min(H, W)))
        for size in sizes.unique().tolist():
            if size < min(H, W):
                pick = sizes == size
                x[pick] = resample_resolution(x[pick], size)
    if cfg.blur:
        sigma = uniform(0.0, cfg.blur) * half()
        x = torch.where((sigma > 0.05).view(B, 1, 1, 1), gaussian_blur(x, sigma.clamp_min(0.05)), x)
    if cfg.haze:
        # a 4x4 grid of random greys, bilinearly enlarged: a veil smoother than a stroke, added at strength s and
        # the sum rescaled into [0, 1] (the strokes keep 1 / (1 + s) of their contrast)
        veil = F.interpolate(torch.rand(B, 1, 4, 4, device=device, generator=generator), size=(H, W),
                             mode="bilinear", align_corners=True)
        strength = (uniform(0.0, cfg.haze) * half()).view(B, 1, 1, 1)
        x = (x + strength * veil) / (1.0 + strength)
    if cfg.noise:
        x = (x + torch.randn(x.shape, device=device, generator=generator) * uniform(0.0, cfg.noise).view(B, 1, 1, 1))
        x = x.clamp(0.0, 1.0)
    if cfg.erasing:
        area = uniform(0.02, 0.15) * H * W
        aspect = torch.exp(uniform(math.log(0.3), math.log(1 / 0.3)))
        h = (area * aspect).sqrt().clamp(1, H)
        w = (area / aspect).sqrt().clamp(1, W)
        top, left = uniform(0, 1) * (H - h), uniform(0, 1) * (W - w)
        rows = torch.arange(H, device=device).view(1, H, 1)
        cols = torch.arange(W, device=device).view(1, 1, W)
        box = ((rows >= top.view(B, 1, 1)) & (rows < (top + h).view(B, 1, 1))
               & (cols >= left.view(B, 1, 1)) & (cols < (left + w).view(B, 1, 1)))
        erase = (torch.rand(B, device=device, generator=generator) < cfg.erasing).view(B, 1, 1)
        x = x.masked_fill((box & erase).unsqueeze(1), 0.0)
    return x


def random_affine(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Warp a float batch (B, C, H, W) with a random affine transform per image; background stays 0."""
    if not cfg.affine:
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
    # width x sqrt(r), height / sqrt(r): the ratio changes by r and the area stays (a wide digit grows less)
    stretch = torch.ones(B, device=device)
    if cfg.aspect:
        stretch = torch.exp(uniform(-math.log1p(cfg.aspect), math.log1p(cfg.aspect)) / 2)
    # translate is in [-1, 1] normalised coords: a fraction f of the image is 2f.
    tx, ty = uniform(-2 * cfg.translate, 2 * cfg.translate), uniform(-2 * cfg.translate, 2 * cfg.translate)
    # output -> input: undo the stretch (x / stretch, y * stretch), then the rotation and zoom
    theta = torch.stack(
        [torch.stack([cos * flip / stretch, -sin * stretch, tx], dim=1),
         torch.stack([sin * flip / stretch, cos * stretch, ty], dim=1)], dim=1
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=cfg.interpolation, padding_mode="zeros", align_corners=False)
