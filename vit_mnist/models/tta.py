"""Test-time augmentation: logits averaged over an image and a few one-pixel shifts of it."""

from __future__ import annotations

from typing import Callable

import torch

# (dy, dx) in pixels: the image itself and its four one-pixel neighbours.
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move a (B, C, H, W) batch by (dy, dx) pixels; the edge pixels fill the uncovered border."""
    if dy == 0 and dx == 0:
        return images
    H, W = images.shape[-2:]
    # Replicated edges are background on MNIST-family images, whatever the normalisation made of it. Output pixel
    # (i, j) is input pixel (i - dy, j - dx) clamped to the image: a replicate pad, written as two gathers so that
    # the ONNX export holds it at every opset (the exporter cannot convert its Pad below opset 18).
    rows = (torch.arange(H, device=images.device) - dy).clamp(0, H - 1)
    cols = (torch.arange(W, device=images.device) - dx).clamp(0, W - 1)
    return images.index_select(-2, rows).index_select(-1, cols)


def tta_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               shifts: tuple[tuple[int, int], ...] = SHIFTS) -> torch.Tensor:
    """Mean of `forward`'s logits over the shifted copies, computed as one batch."""
    views = torch.cat([shift(images, dy, dx) for dy, dx in shifts])
    return forward(views).view(len(shifts), images.shape[0], -1).mean(dim=0)
