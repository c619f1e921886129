"""A network's outputs exactly as the test computes them: normalisation, test-time shifts, logits and features."""

# From uint8 images: the normalisation, the test-time shifts (a distilled student's two heads averaged inside its
# forward), the logits and, when asked, the pre-logit features. The test step, the calibration, the detector, the
# robustness benchmark and the predictor all go through `logits_and_features`, so their numbers agree to the last
# digit; `run_network` adds the uint8-to-input transform of the data module (pixels / 255, then (x - mean) / std)
# and the batching.

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch

from vit_mnist.models.tta import SHIFTS, shift, tta_logits


def prefers_channels_last(device: torch.device | str) -> bool:
    """Whether convolutions on `device` run on channels-last weights: oneDNN's CPU kernels ran 1.5-3x faster on
    them (docs/results.md#fast). Training, inference and the benchmark lay the network out by this one rule."""
    return torch.device(device).type == "cpu"


def has_features(net: torch.nn.Module) -> bool:
    """Whether `net` gives its pre-logit features (both networks of vit_mnist.models do)."""
    return callable(getattr(net, "logits_and_features", None))


def logits_and_features(net: torch.nn.Module, x: torch.Tensor, tta: bool = False, features: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of normalised images `x`, exactly as `net(x)` (with `tta`: as `tta_logits(net, x)`), and, with
    `features`, the pre-logit features, averaged over the same shifts; None without `features`."""
    if not features:
        return (tta_logits(net, x) if tta else net(x)), None
    if not tta:
        return net.logits_and_features(x)
    views = torch.cat([shift(x, dy, dx) for dy, dx in SHIFTS])  # one batch, as tta_logits runs them
    logits, feats = net.logits_and_features(views)
    batch = x.shape[0]  # not len(x): a traced or exported graph keeps the batch axis symbolic
    return (logits.view(len(SHIFTS), batch, -1).mean(dim=0), feats.view(len(SHIFTS), batch, -1).mean(dim=0))


@torch.inference_mode()
def run_network(net: torch.nn.Module, images: torch.Tensor, mean: float, std: float, *, tta: bool = False,
                features: bool = False, device: torch.device | None = None, batch_size: int = 1000,
                context: Callable[[], AbstractContextManager] = nullcontext, channels_last: bool | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits (N, K), features (N, D) or None) of uint8 images (N, 1, H, W), on the CPU as float32, batch by batch
    on `device` (default: the network's) inside `context()` (e.g. the trainer's autocast). The batches take the
    network's dtype: weights trained in bf16-true/16-true are in that dtype. `channels_last` (None: on a CPU) runs
    the convolutions on channels-last weights. The network is left as it was."""
    first = next(net.parameters())
    device, dtype = device or first.device, first.dtype
    was_training, original = net.training, first.device
    net.eval().to(device)
    layout = channels_last if channels_last is not None else prefers_channels_last(device)
    was_contiguous = all(p.is_contiguous() for p in net.parameters() if p.dim() == 4)
    if layout:
        net.to(memory_format=torch.channels_last)
    logits, feats = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).float().div_(255.0)
            x = ((x - mean) / std).to(dtype)  # the data module's transform, op for op
            with context():
                z, f = logits_and_features(net, x, tta, features)
            logits.append(z.float().cpu())
            if f is not None:
                feats.append(f.float().cpu())
    finally:
        net.to(original).train(was_training)
        if layout and was_contiguous:
            net.to(memory_format=torch.contiguous_format)
    return torch.cat(logits), (torch.cat(feats) if feats else None)
