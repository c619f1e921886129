"""Image operations on float batches (B, C, H, W) in [0, 1], on any device: blur, warps, stroke width, scan
resolution, elastic distortion, drawn segments. The training augmentation (augment.py) and the benchmark's
corruptions (corruptions.py) are both built from them."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: torch.Tensor | float, radius: int | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1D Gaussian weights, (len(sigma), 2r+1) for a tensor of sigmas; truncated at 4 sigma
    (scikit-image's default), so the blur matches `skimage.filters.gaussian`. The weights are made on the device of
    a tensor `sigma` (or on `device`): on a GPU, the augmentation draws its sigmas there."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1).clamp_min(1e-3)
    radius = int(math.ceil(4.0 * float(sigma.max()))) if radius is None else radius
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    w = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return w / w.sum(dim=1, keepdim=True)

def blur_matrix(sigma: torch.Tensor | float, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(len(sigma), size, size) matrices M with M @ signal = the signal blurred along its length, edge values
    repeated beyond the ends (skimage's `mode='nearest'`); on the device of `gaussian_kernel1d`'s weights."""
    kernel = gaussian_kernel1d(sigma, device=device)  # (S, 2r+1)
    r, on = kernel.shape[1] // 2, kernel.device
    out = torch.arange(size, device=on).view(size, 1)
    src = (out + torch.arange(-r, r + 1, device=on).view(1, -1)).clamp(0, size - 1)  # (size, 2r+1) source of each tap
    matrix = torch.zeros(kernel.shape[0], size, size, device=on)
    matrix.scatter_add_(2, src.expand(kernel.shape[0], -1, -1), kernel[:, None, :].expand(-1, size, -1))
    return matrix

def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), edges repeated; `sigma` one value or one per image (B,).

    Two small matrix products (rows, then columns): on 28x28 images far faster on a CPU than a convolution
    with a long 1-pixel-wide kernel.
    """
    B, C, H, W = x.shape
    rows = blur_matrix(sigma, H, device=x.device).to(x.dtype)
    cols = blur_matrix(sigma, W, device=x.device).to(x.dtype)
    if rows.shape[0] > 1:  # per image: (B, 1, H, H) broadcast over channels
        rows, cols = rows[:, None], cols[:, None]
    return rows @ x @ cols.transpose(-1, -2)

def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample (B, C, H, W) through per-image 2x3 affine maps from output to input coordinates (normalised
    [-1, 1], centre 0, which is the image centre (13.5, 13.5) of a 28x28 grid); outside is black."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

def affine_matrix(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor,
            tx: torch.Tensor | None = None, ty: torch.Tensor | None = None) -> torch.Tensor:
    zero = torch.zeros_like(a)
    tx = zero if tx is None else tx
    ty = zero if ty is None else ty
    return torch.stack([torch.stack([a, b, tx], dim=1), torch.stack([c, d, ty], dim=1)], dim=1)

def pixel_grid(H: int, W: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(H, dtype=torch.float32, device=device).view(1, H, 1)
    cols = torch.arange(W, dtype=torch.float32, device=device).view(1, 1, W)
    return rows, cols

def draw_segments(shape: Sequence[int], starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Anti-aliased line segments: (B, S, 2) start and end points as (col, row) -> (B, 1, H, W) in [0, 1].

    The intensity profile is MNIST-C's: log(1 - d / 2.3) + 1 at a distance d from the line, clipped to [0, 1]
    (1 on the line, 0 beyond about 1.45 pixels), so a drawn line looks like a pen stroke of the digits' width.
    """
    B, _, H, W = shape
    device = starts.device
    rows, cols = pixel_grid(H, W, device)
    canvas = torch.zeros(B, H, W, device=device)
    for s in range(starts.shape[1]):
        (c0, r0), (c1, r1) = starts[:, s].unbind(-1), ends[:, s].unbind(-1)
        dc, dr = (c1 - c0).view(B, 1, 1), (r1 - r0).view(B, 1, 1)
        length2 = (dc**2 + dr**2).clamp_min(1e-6)
        t = (((cols - c0.view(B, 1, 1)) * dc + (rows - r0.view(B, 1, 1)) * dr) / length2).clamp(0.0, 1.0)
        d = torch.sqrt((cols - c0.view(B, 1, 1) - t * dc) ** 2 + (rows - r0.view(B, 1, 1) - t * dr) ** 2)
        stroke = (torch.log((1.0 - d.clamp(max=2.3 - 1e-6) / 2.3)) + 1.0).clamp(0.0, 1.0)
        canvas = torch.maximum(canvas, stroke)
    return canvas.unsqueeze(1)

def _morph(x: torch.Tensor, steps: int, dilate: bool) -> torch.Tensor:
    """Grayscale dilation (max) or erosion (min) with a 3x3 cross, `steps` times: one pixel per step."""
    sign = 1.0 if dilate else -1.0
    y = x * sign
    for _ in range(steps):  # the cross is the union of a vertical and a horizontal 3-pixel line
        y = torch.maximum(F.max_pool2d(y, (3, 1), stride=1, padding=(1, 0)),
                          F.max_pool2d(y, (1, 3), stride=1, padding=(0, 1)))
    return y * sign

def stroke_width(x: torch.Tensor, amount: torch.Tensor | float) -> torch.Tensor:
    """Thicker (amount > 0) or thinner (amount < 0) strokes by |amount| pixels per side; fractions blend two steps.

    `amount` is one value or one per image (B,). Morphology on grey levels keeps the anti-aliased edges.
    """
    amount = torch.as_tensor(amount, dtype=x.dtype, device=x.device).reshape(-1)
    amount = amount.expand(x.shape[0]) if amount.numel() == 1 else amount
    steps = int(math.ceil(float(amount.abs().max()))) if len(amount) else 0
    if steps == 0:
        return x
    out = x.clone()
    for dilate in (True, False):
        a = amount.clamp(min=0) if dilate else (-amount).clamp(min=0)
        if not bool((a > 0).any()):
            continue
        ladder = [x]
        for _ in range(steps):
            ladder.append(_morph(ladder[-1], 1, dilate))
        ladder_t = torch.stack(ladder)  # (steps+1, B, C, H, W)
        low = a.floor().long().clamp(max=steps - 1)
        frac = (a - low).view(-1, 1, 1, 1)
        idx = torch.arange(x.shape[0], device=x.device)
        blended = ladder_t[low, idx] * (1 - frac) + ladder_t[low + 1, idx] * frac
        chosen = (a > 0).view(-1, 1, 1, 1)
        out = torch.where(chosen, blended, out)
    return out

def resample_resolution(x: torch.Tensor, size: int) -> torch.Tensor:
    """Down to size x size by area averaging (what a low-resolution scan records), back up bilinearly."""
    H, W = x.shape[-2:]
    if size >= min(H, W):
        return x
    small = F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False).clamp(0.0, 1.0)

def elastic_warp(x: torch.Tensor, alpha: float | torch.Tensor, sigma: float,
                 gen: torch.Generator | None = None) -> torch.Tensor:
    """Simard's elastic distortion of a batch; `alpha` one value or one per image (B,)."""
    B, _, H, W = x.shape
    # drawn where the generator lives (the CPU for the benchmark, the batch's device in training)
    field = torch.rand((B, 2, H, W), generator=gen, device=gen.device if gen is not None else x.device)
    field = field.to(x.device) * 2 - 1
    field = gaussian_blur(field, sigma)
    alpha_t = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    dx, dy = (field * alpha_t).unbind(1)  # pixels
    rows, cols = pixel_grid(H, W, x.device)
    # grid_sample's normalised coordinates (align_corners=False): pixel i sits at (2i + 1) / size - 1
    gx = (2 * (cols + dx) + 1) / W - 1
    gy = (2 * (rows + dy) + 1) / H - 1
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="zeros",
                         align_corners=False).clamp(0.0, 1.0)
