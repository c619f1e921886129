"""Continental handwriting conventions drawn onto training digits: a flag and a foot on 1s, a bar through 7s."""

from __future__ import annotations

import math

import torch

from vit_mnist.data.image_ops import draw_segments

INK = 0.3  # a pixel brighter than this (of 1) is ink when finding where a digit's stroke starts and ends


def writer_styles(images: torch.Tensor, labels: torch.Tensor, p: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of `images` (B, 1, H, W, floats in [0, 1]) in which each 1 has, with probability `p`, a flag drawn
    from the top of its stroke down to the left (half of those also a foot), and each 7 a bar across its stem.

    MNIST's writers (American census staff and students) wrote plain 1s and 7s; much of the world writes them
    flagged and crossed, and the other writers' set (UCI, NIST forms) shows almost only those: a model that never
    saw them reads a flagged 1 as a 7 or a 4. Labels other than 1 and 7 (outliers carry -1) leave an image as it is.
    """
    x = images.clone()
    B, _, H, W = x.shape
    device = x.device
    ink = x[:, 0] > INK
    drawn = (torch.rand(B, device=device, generator=generator) < p) & ink.flatten(1).any(1)
    for digit, draw in ((1, _flag_and_foot), (7, _bar)):
        pick = (drawn & (labels.to(device) == digit)).nonzero().flatten()
        if len(pick):
            strokes = draw(ink[pick], generator)
            peak = x[pick].amax(dim=(1, 2, 3), keepdim=True)
            x[pick] = torch.maximum(x[pick], strokes * peak)
    return x


def _extent(ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and last row holding ink, per image of (n, H, W)."""
    H = ink.shape[1]
    rows = torch.arange(H, device=ink.device).expand(ink.shape[0], H)
    has = ink.any(2)
    return torch.where(has, rows, H).amin(1), torch.where(has, rows, -1).amax(1)


def _centre_column(ink: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The mean column of the ink in rows first..last (inclusive), per image; the image's centre where there is none."""
    n, H, W = ink.shape
    rows = torch.arange(H, device=ink.device).view(1, H, 1)
    band = ink & (rows >= first.view(n, 1, 1)) & (rows <= last.view(n, 1, 1))
    cols = torch.arange(W, device=ink.device, dtype=torch.float32).view(1, 1, W)
    count = band.flatten(1).sum(1)
    mean = (band * cols).flatten(1).sum(1) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, (W - 1) / 2))


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=like.device, generator=generator) * (high - low) + low


def _flag_and_foot(ink: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(n, 1, H, W) strokes for n 1s: a flag from the top of the stroke, down-left at 35-65 degrees, 0.2-0.4 of the
    digit's height long (steeper and shorter than a 7's bar: flags of 0.3-0.5 at 20-50 degrees made MNIST 7s
    read as 1s, measured); and, on half of them, a foot across the bottom of the stroke."""
    n, H, W = ink.shape
    top, bottom = _extent(ink)
    height = (bottom - top + 1).float()
    top_col = _centre_column(ink, top, top + 2)
    bottom_col = _centre_column(ink, bottom - 2, bottom)
    length = height * _uniform(n, 0.2, 0.4, height, generator)
    angle = _uniform(n, math.radians(35), math.radians(65), height, generator)
    start = torch.stack([top_col, top.float()], dim=1)
    end = torch.stack([(top_col - length * torch.cos(angle)).clamp(0, W - 1),
                       (top.float() + length * torch.sin(angle)).clamp(0, H - 1)], dim=1)
    strokes = draw_segments((n, 1, H, W), start.unsqueeze(1), end.unsqueeze(1))
    footed = torch.rand(n, device=ink.device, generator=generator) < 0.5
    if footed.any():
        left = height * _uniform(n, 0.12, 0.25, height, generator)
        right = height * _uniform(n, 0.12, 0.25, height, generator)
        row = bottom.float()
        foot_start = torch.stack([(bottom_col - left).clamp(0, W - 1), row], dim=1)
        foot_end = torch.stack([(bottom_col + right).clamp(0, W - 1), row], dim=1)
        foot = draw_segments((n, 1, H, W), foot_start.unsqueeze(1), foot_end.unsqueeze(1))
        strokes = torch.where(footed.view(n, 1, 1, 1), torch.maximum(strokes, foot), strokes)
    return strokes


def _bar(ink: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(n, 1, H, W) strokes for n 7s: a short bar across the stem, a little below half the digit's height."""
    n, H, W = ink.shape
    top, bottom = _extent(ink)
    height = (bottom - top + 1).float()
    row = (top.float() + height * _uniform(n, 0.45, 0.6, height, generator)).round()
    stem = _centre_column(ink, row.long() - 1, row.long() + 1)
    half_width = height * _uniform(n, 0.15, 0.25, height, generator)
    tilt = _uniform(n, -1.5, 1.5, height, generator)
    start = torch.stack([(stem - half_width).clamp(0, W - 1), (row + tilt).clamp(0, H - 1)], dim=1)
    end = torch.stack([(stem + half_width).clamp(0, W - 1), (row - tilt).clamp(0, H - 1)], dim=1)
    return draw_segments((n, 1, H, W), start.unsqueeze(1), end.unsqueeze(1))
