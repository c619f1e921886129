"""Distillation through attention (DeiT, Touvron et al., 2021): a teacher's predictions train a distillation token."""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("hard", "soft")


def distillation_loss(logits: torch.Tensor, dist_logits: torch.Tensor, labels: torch.Tensor,
                      teacher_logits: torch.Tensor, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - alpha) * the class head's cross-entropy with the labels + alpha * the distillation head's loss:
    hard, cross-entropy with the teacher's predicted class; soft, tau^2 * KL(teacher || student) at temperature
    tau (the tau^2 keeps its gradients on the scale of the hard loss's)."""
    base = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    teacher_logits = teacher_logits.detach().float()
    if kind == "hard":
        distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=-1))
    else:
        distill = F.kl_div(F.log_softmax(dist_logits.float() / tau, dim=-1), F.log_softmax(teacher_logits / tau, dim=-1),
                           reduction="batchmean", log_target=True) * tau * tau
    return (1.0 - alpha) * base + alpha * distill
