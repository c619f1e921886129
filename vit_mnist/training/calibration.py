"""Temperature scaling (Guo et al., ICML 2017): the fit of one scalar on validation logits, and the network's outputs
as the test computes them on the trainer's device (the after-fit step, vit_mnist.training.after_fit, uses both)."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F

from vit_mnist.errors import UserError
from vit_mnist.models.outputs import run_network
from vit_mnist.training.module import ViTClassifier

log = logging.getLogger(__name__)

# A safety net: with an optimum at all (see `has_optimum`), the fitted temperature lies far inside these bounds.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
METHOD = "temperature scaling (Guo et al., 2017): softmax(logits / temperature), temperature fitted by NLL"
# What the temperature is fitted on: the validation digits as they are, or those and half of them again under sensor
# noise of every strength from none to unreadable, each half of the fit (Tomani et al., CVPR 2021, "Post-hoc
# Uncertainty Calibration for Domain Drift Scenarios"): a network that answers corrupted digits too flatly gets
# one temperature that serves both (docs/calibration.md#calibrated-for-corrupted-digits-too)
NOISE_STD = 1.0  # the strongest noise (pixels in [0, 1]): at 1 a digit is mostly unreadable
CALIBRATE_ON = {"clean": "validation digits",
                "noisy": f"validation digits, and half of them again under Gaussian noise of std 0 to {NOISE_STD:g} "
                         "(counted twice)"}


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature), in float64."""
    return float(F.cross_entropy(logits.detach().double().cpu() / temperature, labels.detach().long().cpu()))


def has_optimum(logits: torch.Tensor, labels: torch.Tensor) -> str:
    """Why the NLL of softmax(logits / T) has no minimum at a finite T > 0, or "" when it has one.

    The NLL is convex in 1/T; its slope there is negative for every 1/T when every image's true class has the
    largest logit (the NLL falls towards 0 as T -> 0: a perfectly separated validation set), and positive for every
    1/T > 0 when the true class's logit is on average at or below the mean logit (T -> infinity: uniform beats it).
    """
    z, y = logits.double(), labels.long()
    true = z.gather(1, y[:, None])[:, 0]
    if bool((true >= z.max(dim=1).values).all()):
        return "every validation image's true class has the largest logit (the NLL keeps falling as T -> 0)"
    if float((true - z.mean(dim=1)).mean()) <= 0:
        return "the true classes' logits are on average no higher than the others' (T -> infinity)"
    return ""


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) on (N, K) logits and (N,) labels.

    log T is optimised (so T stays positive) with L-BFGS and a strong-Wolfe line search in float64, from T = 1:
    deterministic, and the NLL is smooth and unimodal in log T. Where it has no finite minimum (`has_optimum`),
    or the result would be worse on these logits than T = 1, the answer is 1, with a log warning.
    """
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N > 0, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    if not torch.isfinite(z).all():
        raise ValueError("the logits hold NaN or infinite values: there is no temperature to fit")
    reason = has_optimum(z, y)
    if reason:
        log.warning("No temperature to fit: %s. The model stays uncalibrated (temperature 1); a larger validation "
                    "split (data.val_size) or a longer run gives one.", reason)
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    with torch.enable_grad():  # also when called under inference_mode / no_grad
        optimizer.step(closure)
    fitted = float(log_t.detach().exp())
    if not math.isfinite(fitted):
        fitted = 1.0
    temperature = min(max(fitted, MIN_TEMPERATURE), MAX_TEMPERATURE)
    if temperature != fitted:
        log.warning("The fitted temperature %.4g lies outside [%g, %g] and was clipped.", fitted, MIN_TEMPERATURE,
                    MAX_TEMPERATURE)
    return temperature if nll(z, y, temperature) <= nll(z, y) else 1.0


def check_calibrate_on(value: Any) -> str:
    """`value` (None: clean) if it is one of CALIBRATE_ON; a one-paragraph `UserError` otherwise."""
    value = "clean" if value is None else value
    if value not in CALIBRATE_ON:
        raise UserError(f"calibrate_on={value!r} is not one of {list(CALIBRATE_ON)}: `clean` fits the temperature on "
                        "the validation digits as they are, `noisy` on those and half of them again under Gaussian "
                        "noise of every strength (one temperature for clean and corrupted digits; "
                        "docs/calibration.md).")
    return value


def noisy_copies(images: torch.Tensor, seed: int = 1, max_std: float = NOISE_STD) -> torch.Tensor:
    """uint8 images (N, 1, H, W) under Gaussian noise (pixels in [0, 1]), each at its own std: the N stds evenly
    spaced over [0, max_std] in an order drawn from `seed` (every strength equally represented, the same copies
    on every run)."""
    generator = torch.Generator().manual_seed(seed)
    x = images.float().div(255.0)
    std = (torch.arange(len(x)) + 0.5) / len(x) * max_std
    std = std[torch.randperm(len(x), generator=generator)]
    x = x + torch.randn(x.shape, generator=generator) * std.view(-1, *([1] * (x.ndim - 1)))
    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def fit_temperature_on(calibrate_on: str, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor,
                       outputs: Callable[[torch.Tensor], torch.Tensor], max_std: float = NOISE_STD) -> float:
    """The temperature fitted on what `calibrate_on` (a CALIBRATE_ON key) names: the `logits` of the uint8 `images`
    with their `labels`, and with `noisy` also the logits `outputs` gives noisy copies of the first half of them
    (`noisy_copies` up to `max_std`), counted twice so that each half weighs the same."""
    if calibrate_on == "clean":
        return fit_temperature(logits, labels)
    half = (len(labels) + 1) // 2
    noisy = outputs(noisy_copies(images[:half], max_std=max_std)).to(logits.dtype)
    return fit_temperature(torch.cat([logits, noisy, noisy]), torch.cat([labels, labels[:half], labels[:half]]))


def network_outputs(trainer: L.Trainer, module: ViTClassifier, datamodule: Any, features: bool = False
                    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]:
    """uint8 (N, 1, H, W) images -> (logits, pre-head features or None), the logits as the test step computes them
    (vit_mnist.models.outputs.run_network) on the trainer's device and in its precision."""
    batch_size = int(datamodule.hparams.get("eval_batch_size", 100))
    tta = bool(module.hparams.get("tta", False))

    def outputs(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return run_network(module.net, images, datamodule.mean, datamodule.std, tta=tta, features=features,
                           device=trainer.strategy.root_device, batch_size=batch_size,
                           context=trainer.precision_plugin.test_step_context)

    return outputs
