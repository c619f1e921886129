"""Test-time augmentation: logits averaged over an image and a few one-pixel shifts of it."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# (dy, dx) in pixels: the image itself and its four one-pixel neighbours.
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move a (B, C, H, W) batch by (dy, dx) pixels; the edge pixels fill the uncovered border."""
    if dy == 0 and dx == 0:
        return images
    H, W = images.shape[-2:]
    pad = max(abs(dy), abs(dx))
    # Replicated edges are background on MNIST-family images, whatever the normalisation made of it.
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    return padded[..., pad - dy:pad - dy + H, pad - dx:pad - dx + W]


def tta_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               shifts: tuple[tuple[int, int], ...] = SHIFTS) -> torch.Tensor:
    """Mean of `forward`'s logits over the shifted copies, computed as one batch."""
    views = torch.cat([shift(images, dy, dx) for dy, dx in shifts])
    return forward(views).view(len(shifts), images.shape[0], -1).mean(dim=0)
