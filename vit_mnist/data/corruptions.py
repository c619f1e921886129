"""Image corruptions for the robustness benchmark: MNIST-C's fifteen and the shifts other handwriting brings.

Every corruption is a function `fn(x, level, gen) -> x'` on a float batch (B, 1, H, W) with pixels in [0, 1]
(white digit on black, as MNIST). `level` is one entry of that corruption's `levels` list in
`conf/robustness.yaml` (severity 1 is the first entry); `gen` is a CPU `torch.Generator`. Random numbers are
always drawn on the CPU from `gen` and then moved to the batch's device, so a seed gives the same corrupted
images on any device. `corrupt()` wraps a corruption for uint8 images: it quantises the result back to uint8,
as a corrupted image saved to disk would be.

The definitions and MNIST-C severities follow Mu & Gilmer (2019), "MNIST-C: A Robustness Benchmark for Computer
Vision", and its reference code; where a step there is sequential per pixel (glass blur's local shuffle) or
comes from an image library (ImageMagick's motion blur, diamond-square fog), this module has a batched tensor
equivalent, said in the function's docstring.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vit_mnist.data.image_ops import (
    affine_matrix,
    draw_segments,
    elastic_warp,
    gaussian_blur,
    pixel_grid,
    resample_resolution,
    stroke_width,
    warp,
)

Corruption = Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]


# --------------------------------------------------------------------------------------------------- helpers

def _rand(gen: torch.Generator, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=gen, device=gen.device).to(device)


def _randn(gen: torch.Generator, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, device=gen.device).to(device)


def _signs(gen: torch.Generator, n: int, device: torch.device) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=gen, device=gen.device) < 0.5, -1.0, 1.0).to(device)


def fractal_noise(gen: torch.Generator, n: int, size: int, decay: float, device: torch.device) -> torch.Tensor:
    """(n, 1, size, size) plasma-like fractal noise in [0, 1]: random grids of 2, 4, 8, ... cells, bilinearly
    enlarged and summed with amplitudes shrinking by `decay` per octave. It has the spectrum of MNIST-C's
    diamond-square plasma (`wibbledecay`) and is batched."""
    total = torch.zeros(n, 1, size, size, device=device)
    cells, amplitude = 2, 1.0
    while cells <= size:
        grid = _rand(gen, (n, 1, cells + 1, cells + 1), device) * 2 - 1
        total += amplitude * F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)
        cells, amplitude = cells * 2, amplitude / decay
    low = total.amin(dim=(2, 3), keepdim=True)
    high = total.amax(dim=(2, 3), keepdim=True)
    return (total - low) / (high - low).clamp_min(1e-6)


# ------------------------------------------------------------------------------------------- MNIST-C corruptions

def shot_noise(x: torch.Tensor, photons: float, gen: torch.Generator) -> torch.Tensor:
    """Poisson noise: each pixel counts Poisson(x * photons) photons; fewer photons, noisier."""
    counts = torch.poisson((x * float(photons)).cpu(), generator=gen).to(x.device)
    return (counts / float(photons)).clamp(0.0, 1.0)


def impulse_noise(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Salt and pepper: a fraction `amount` of the pixels set to white or black, half each."""
    u = _rand(gen, x.shape, x.device)
    x = torch.where(u < amount / 2, torch.ones_like(x), x)
    return torch.where((u >= amount / 2) & (u < amount), torch.zeros_like(x), x)


def glass_blur(x: torch.Tensor, level: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """Blur, scramble pixels locally, blur again; level = (sigma, max_delta, iterations).

    MNIST-C swaps pixel pairs one at a time; here each pixel, with probability 1/2 per iteration, takes the value
    of a random neighbour within `max_delta` in one gather, which scrambles as locally and is batched.
    """
    sigma, delta, iterations = float(level[0]), int(level[1]), int(level[2])
    B, C, H, W = x.shape
    x = gaussian_blur(x, sigma)
    rows, cols = pixel_grid(H, W, x.device)
    flat = x.reshape(B, C, H * W)
    for _ in range(iterations):
        move = (_rand(gen, (B, H, W), x.device) < 0.5).float()
        dy = torch.randint(-delta, delta, (B, H, W), generator=gen, device=gen.device).to(x.device) * move
        dx = torch.randint(-delta, delta, (B, H, W), generator=gen, device=gen.device).to(x.device) * move
        src = ((rows + dy).clamp(0, H - 1) * W + (cols + dx).clamp(0, W - 1)).long().reshape(B, 1, H * W)
        flat = torch.gather(flat, 2, src.expand(B, C, H * W))
    return gaussian_blur(flat.reshape(B, C, H, W), sigma).clamp(0.0, 1.0)


def motion_blur(x: torch.Tensor, level: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """One-sided blur along a random direction within 45 degrees of horizontal; level = (radius, sigma).

    ImageMagick's MotionBlurImage (what MNIST-C calls) averages 2*radius+1 samples taken 0, 1, 2, ... pixels
    along the direction, weighted by a Gaussian of `sigma` in the sample index; the same here, batched with
    one resampling per tap.
    """
    radius, sigma = int(level[0]), float(level[1])
    B = x.shape[0]
    angle = (_rand(gen, (B,), x.device) * 90.0 - 45.0) * (math.pi / 180.0)
    taps = torch.arange(2 * radius + 1, dtype=torch.float32, device="cpu")  # Python floats for the taps' weights
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = (weights / weights.sum()).tolist()
    step_x, step_y = torch.cos(angle) * 2.0 / x.shape[-1], -torch.sin(angle) * 2.0 / x.shape[-2]
    one, zero = torch.ones(B, device=x.device), torch.zeros(B, device=x.device)
    out = torch.zeros_like(x)
    for i, w in enumerate(weights):
        if w < 1e-4:
            break
        out += w * warp(x, affine_matrix(one, zero, zero, one, step_x * i, step_y * i))
    return out.clamp(0.0, 1.0)


def shear(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Shear by `amount` radians, left or right at random, about the image centre."""
    B = x.shape[0]
    s = _signs(gen, B, x.device) * float(amount)
    one, zero = torch.ones(B, device=x.device), torch.zeros(B, device=x.device)
    return warp(x, affine_matrix(one, -torch.sin(s), zero, torch.cos(s))).clamp(0.0, 1.0)


def rotate(x: torch.Tensor, radians: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate by `radians`, either way at random, about the image centre."""
    a = _signs(gen, x.shape[0], x.device) * float(radians)
    return warp(x, affine_matrix(torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a))).clamp(0.0, 1.0)


def scale(x: torch.Tensor, factor: float, gen: torch.Generator) -> torch.Tensor:
    """Shrink (factor < 1) or enlarge the digit about the image centre."""
    B = x.shape[0]
    inv = torch.full((B,), 1.0 / float(factor), device=x.device)
    zero = torch.zeros(B, device=x.device)
    return warp(x, affine_matrix(inv, zero, zero, inv)).clamp(0.0, 1.0)


def translate(x: torch.Tensor, pixels: float, gen: torch.Generator) -> torch.Tensor:
    """Shift by `pixels` along both axes, each direction chosen at random."""
    B, _, H, W = x.shape
    tx = _signs(gen, B, x.device) * float(pixels) * 2.0 / W
    ty = _signs(gen, B, x.device) * float(pixels) * 2.0 / H
    one, zero = torch.ones(B, device=x.device), torch.zeros(B, device=x.device)
    return warp(x, affine_matrix(one, zero, zero, one, tx, ty)).clamp(0.0, 1.0)


def brightness(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Raise the HSV value by `amount`: for a grey image, every pixel brighter, the black background grey."""
    return (x + float(amount)).clamp(0.0, 1.0)


def stripe(x: torch.Tensor, width: int, gen: torch.Generator) -> torch.Tensor:
    """Invert the `width` leftmost and rightmost columns (MNIST-C inverts 7 of 28 on each side)."""
    width = int(width)
    x = x.clone()
    x[..., :width] = 1.0 - x[..., :width]
    x[..., x.shape[-1] - width:] = 1.0 - x[..., x.shape[-1] - width:]
    return x


def fog(x: torch.Tensor, level: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """Add fractal fog of strength `level[0]` (octave decay `level[1]`) and rescale to keep the digit's peak."""
    strength, decay = float(level[0]), float(level[1])
    B, _, H, W = x.shape
    size = 1 << max(H, W - 1).bit_length()  # the power of two that covers the image, cropped after
    noise = fractal_noise(gen, B, size, decay, x.device)[..., :H, :W]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * noise) * peak / (peak + strength)).clamp(0.0, 1.0)


def spatter(x: torch.Tensor, level: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """Mud blobs of grey 63/255 over the image; level = (mean, std, sigma, threshold, mask sigma).

    Gaussian noise blurred by `sigma` is thresholded into blobs, whose blurred mask, where above 0.8, is mud.
    """
    loc, std, sigma, threshold, mask_sigma = (float(v) for v in level[:5])
    liquid = gaussian_blur(_randn(gen, x.shape, x.device) * std + loc, sigma)
    mask = gaussian_blur((liquid > threshold).float(), mask_sigma)
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
    return (x * (1 - mask) + (63.0 / 255.0) * mask).clamp(0.0, 1.0)


def dotted_line(x: torch.Tensor, lines: int, gen: torch.Generator) -> torch.Tensor:
    """`lines` dashed lines (2 pixels on, 2 off) across the whole image, from and to random rows."""
    B, _, H, W = x.shape
    rows = torch.randint(0, H - 1, (B, int(lines), 2), generator=gen, device=gen.device).float().to(x.device)
    starts = torch.stack([torch.zeros_like(rows[..., 0]), rows[..., 0]], dim=-1)
    ends = torch.stack([torch.full_like(rows[..., 1], W - 1.0), rows[..., 1]], dim=-1)
    canvas = torch.zeros_like(x)
    for i in range(int(lines)):  # each line dashed on its own columns
        canvas = torch.maximum(canvas, draw_segments(x.shape, starts[:, i:i + 1], ends[:, i:i + 1]))
    dashes = ((torch.arange(W, device=x.device) // 2) % 2 == 1).float()  # columns 2-3, 6-7, ... drawn
    return (x + canvas * dashes).clamp(0.0, 1.0)


def zigzag(x: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` zigzag lines (teeth 2 pixels long and 2 high) from column 2 to 25, each at a random row and slant."""
    B, _, H, W = x.shape
    c0, c1, a, b = 2.0, 25.0, 2.0, 2.0
    out = x
    for _ in range(int(count)):
        # the corner points are drawn and laid out on the generator's device (the CPU), then moved to the batch
        r0 = torch.randint(0, H - 1, (B,), generator=gen, device=gen.device).float()
        r1 = r0 + torch.randint(-5, 5, (B,), generator=gen, device=gen.device).float()
        theta = torch.atan((r1 - r0) / (c1 - c0))
        length = (c1 - c0) / torch.cos(theta)
        teeth = int(float(length.max()) // (2 * a)) * 2 + 2
        corners = torch.arange(teeth + 1, device=r0.device)
        along = corners.float() * a  # corner points every `a` pixels
        across = torch.where(corners % 2 == 1, b, 0.0) * torch.where((corners // 2) % 2 == 1, -1.0, 1.0)
        along = torch.minimum(along[None, :], length[:, None])  # stop at the line's end
        cols = c0 + along * torch.cos(theta)[:, None] - across[None, :] * torch.sin(theta)[:, None]
        rows = r0[:, None] + along * torch.sin(theta)[:, None] + across[None, :] * torch.cos(theta)[:, None]
        points = torch.stack([cols, rows], dim=-1).to(x.device)
        out = (out + draw_segments(x.shape, points[:, :-1], points[:, 1:])).clamp(0.0, 1.0)
    return out


def canny_edges(x: torch.Tensor, blend: float, gen: torch.Generator) -> torch.Tensor:
    """The digit's Canny edges (MNIST-C: the edges alone, blend 1.0); lower severities blend them with the image.

    Canny's non-maximum suppression and hysteresis are fiddly to get right; scikit-image's `feature.canny` is
    what MNIST-C used, so it is called per image here (about a millisecond each on a CPU).
    """
    from skimage import feature

    images = x.detach().cpu().numpy()
    edges = np.stack([[feature.canny(channel.astype(np.float64)) for channel in image] for image in images])
    edges_t = torch.from_numpy(edges.astype(np.float32)).to(x.device)
    return (1.0 - float(blend)) * x + float(blend) * edges_t


# ------------------------------------------------------------------------------- shifts of other handwriting

def thin(x: torch.Tensor, pixels: float, gen: torch.Generator) -> torch.Tensor:
    """Thinner strokes: grey-level erosion by `pixels` per side (a fine pen instead of MNIST's thick one)."""
    return stroke_width(x, -float(pixels))


def thick(x: torch.Tensor, pixels: float, gen: torch.Generator) -> torch.Tensor:
    """Thicker strokes: grey-level dilation by `pixels` per side (a marker, or a finger on the web app)."""
    return stroke_width(x, float(pixels))


def low_resolution(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Scanned at size x size pixels and enlarged back to the full size."""
    return resample_resolution(x, int(size))


def elastic(x: torch.Tensor, level: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """Elastic distortion (Simard et al., 2003): a random displacement field, smoothed by a Gaussian of `sigma`
    pixels and scaled by `alpha`, moves every pixel; level = (alpha, sigma)."""
    alpha, sigma = float(level[0]), float(level[1])
    return elastic_warp(x, alpha, sigma, gen)


def off_centre(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Move the digit to a random place within `fraction` of the room its bounding box has to each border.

    MNIST centres each digit by its centre of mass in a 20x20 box; a digit cut from a form or a photo sits
    wherever it was written. At fraction 1 the digit may touch any border, but is never cut.
    """
    B, _, H, W = x.shape
    ink = x[:, 0] > 0.1
    rows_any, cols_any = ink.any(dim=2), ink.any(dim=1)
    idx_r = torch.arange(H, device=x.device).expand(B, H)
    idx_c = torch.arange(W, device=x.device).expand(B, W)
    top = torch.where(rows_any, idx_r, H).amin(dim=1).clamp(max=H // 2)
    bottom = torch.where(rows_any, idx_r, -1).amax(dim=1).clamp(min=H // 2)
    left = torch.where(cols_any, idx_c, W).amin(dim=1).clamp(max=W // 2)
    right = torch.where(cols_any, idx_c, -1).amax(dim=1).clamp(min=W // 2)
    u, v = _rand(gen, (B,), x.device), _rand(gen, (B,), x.device)
    f = float(fraction)
    # a shift in [-room before, +room after], scaled by the fraction, whole pixels so strokes stay sharp
    dx = torch.round((-left.float() + u * (left.float() + (W - 1 - right).float())) * f)
    dy = torch.round((-top.float() + v * (top.float() + (H - 1 - bottom).float())) * f)
    one, zero = torch.ones(B, device=x.device), torch.zeros(B, device=x.device)
    return warp(x, affine_matrix(one, zero, zero, one, -dx * 2.0 / W, -dy * 2.0 / H)).clamp(0.0, 1.0)


KINDS: dict[str, Corruption] = {
    fn.__name__: fn
    for fn in (shot_noise, impulse_noise, glass_blur, motion_blur, shear, scale, rotate, brightness, translate,
               stripe, fog, spatter, dotted_line, zigzag, canny_edges, thin, thick, low_resolution, elastic,
               off_centre)
}


def corruption_seed(seed: int, name: str, chunk: int) -> int:
    """A seed for one corruption and one chunk of images, stable across runs, machines and Python versions."""
    return zlib.crc32(f"{seed}:{name}:{chunk}".encode())


def corrupt(images: torch.Tensor, kind: str, level: object, seed: int = 0, name: str | None = None,
            chunk_size: int = 1000) -> torch.Tensor:
    """uint8 images (N, 1, H, W) -> corrupted uint8 images, the same for a seed whatever the device or batch size.

    The images are corrupted in fixed chunks of `chunk_size`, each with its own generator, so memory stays bounded
    and the result does not depend on how the caller batches its evaluation.
    """
    fn = KINDS[kind]
    name = name or kind
    out = torch.empty_like(images)
    for chunk, start in enumerate(range(0, len(images), chunk_size)):
        gen = torch.Generator().manual_seed(corruption_seed(seed, name, chunk))
        x = images[start:start + chunk_size].float() / 255.0
        y = fn(x, level, gen)
        out[start:start + chunk_size] = (y.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return out
