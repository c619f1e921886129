"""Validation digits drawn as another writer, pen and scanner might have made them: the shift the detector's
confidence threshold can be fixed on (`verdict_unsure_on=writer_shift`)."""

from __future__ import annotations

import torch

from vit_mnist.data.augment import AugmentConfig, augment

# experiment=handwriting's ranges (conf/experiment/handwriting.yaml) on every image, with width-to-height variation:
# a shift like the other writers' (docs/out_of_domain.md), drawn from the digits themselves, never from that set
WRITER_SHIFT = AugmentConfig(rotation=15.0, translate=0.12, scale=(0.85, 1.15), aspect=1.0, elastic=16.0,
                             elastic_sigma=4.0, stroke=1.0, blur=1.0, min_resolution=10, noise=0.1, erasing=0.25)


def writer_shifted(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """uint8 digits (N, 1, H, W) drawn through WRITER_SHIFT (the same images for the same `seed`), as uint8."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    drawn = augment(images.float() / 255, WRITER_SHIFT, generator)
    return (drawn.clamp(0, 1) * 255).round().to(torch.uint8)
