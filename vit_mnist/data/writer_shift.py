"""Validation digits drawn as another writer, pen and scanner might have made them: the shift the detector's
confidence threshold can be fixed on (`verdict_unsure_on=writer_shift`)."""

from __future__ import annotations

from dataclasses import replace

import torch

from vit_mnist.data.augment import AugmentConfig, augment

# experiment=handwriting's ranges (conf/experiment/handwriting.yaml) on every image, with width-to-height variation:
# a shift like the other writers' (docs/out_of_domain.md), drawn from the digits themselves, never from that set
WRITER_SHIFT = AugmentConfig(rotation=15.0, translate=0.12, scale=(0.85, 1.15), aspect=1.0, elastic=16.0,
                             elastic_sigma=4.0, stroke=1.0, blur=1.0, min_resolution=10, noise=0.1, erasing=0.25)


def writer_shift(strength: float = 1.0) -> AugmentConfig:
    """WRITER_SHIFT with every range scaled by `strength` in [0, 1] (0: no change; scans from 27 pixels down to
    27 - strength x 17): a milder shift for a model trained without the handwriting augmentation."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"the writer shift's strength {strength!r} must be in [0, 1]")
    w = WRITER_SHIFT
    return replace(w, rotation=w.rotation * strength, translate=w.translate * strength,
                   scale=(1 - (1 - w.scale[0]) * strength, 1 + (w.scale[1] - 1) * strength),
                   aspect=w.aspect * strength, elastic=w.elastic * strength, stroke=w.stroke * strength,
                   blur=w.blur * strength, noise=w.noise * strength, erasing=w.erasing * strength,
                   min_resolution=round(27 - (27 - w.min_resolution) * strength) if strength else 0)


def writer_shifted(images: torch.Tensor, seed: int = 0, strength: float = 1.0) -> torch.Tensor:
    """uint8 digits (N, 1, H, W) drawn through `writer_shift(strength)` (the same images for the same `seed`), as
    uint8."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    drawn = augment(images.float() / 255, writer_shift(strength), generator)
    return (drawn.clamp(0, 1) * 255).round().to(torch.uint8)
