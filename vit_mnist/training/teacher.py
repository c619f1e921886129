"""The teacher of a distillation run: checked before any work, loaded frozen; the student never needs it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn

from vit_mnist.data.sources import get_spec
from vit_mnist.errors import UserError
from vit_mnist.training.checkpoints import load_module, read_checkpoint, trained_dataset
from vit_mnist.training.distill import KINDS


def check_distill(distill: Mapping[str, Any] | None, model: Mapping[str, Any], dataset: str) -> None:
    """Before any work: `UserError` for a teacher that cannot teach this run (missing, unreadable, trained on other
    data or another class count) and for options out of range."""
    if not distill or not distill.get("teacher"):
        if model.get("distill_token"):
            raise UserError("model.distill_token=true but no teacher: set distill.teacher=<a checkpoint of this "
                            "project trained on the same data>, or leave model.distill_token to follow it.")
        return
    path = str(distill["teacher"])
    if model.get("arch", "vit") != "vit":
        raise UserError(f"distill.teacher={path}: distillation trains a ViT's distillation token, and this run trains "
                        f"model={model.get('arch')}. Use model=vit for the student, or set distill.teacher=null.")
    if not model.get("distill_token"):
        raise UserError("distill.teacher is set but model.distill_token=false: the student needs its distillation "
                        "token. Leave model.distill_token at its default (it follows distill.teacher).")
    if distill.get("kind", "hard") not in KINDS:
        raise UserError(f"distill.kind={distill.get('kind')!r} is not one of {list(KINDS)}: hard (the teacher's "
                        "class as the label) or soft (its probabilities at temperature distill.tau).")
    alpha, tau = distill.get("alpha", 0.5), distill.get("tau", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise UserError(f"distill.alpha={alpha!r} must be in [0, 1]: the distillation loss's weight (DeiT: 0.5).")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0:
        raise UserError(f"distill.tau={tau!r} must be a positive number: soft distillation's temperature (e.g. 3).")
    ckpt = read_checkpoint(path, key="distill.teacher", hint=" Or set distill.teacher=null to train without one.")
    spec, taught = get_spec(dataset), trained_dataset(ckpt)
    names = ckpt["hyper_parameters"].get("class_names") or []
    classes = ckpt["hyper_parameters"]["model"].get("num_classes")
    if taught != spec.name or classes != len(spec.classes) or (names and list(names) != list(spec.classes)):
        raise UserError(
            f"distill.teacher={path} was trained on {taught} ({classes} classes), but this run trains on "
            f"{spec.name} ({len(spec.classes)} classes): a teacher must predict the same classes. Give a checkpoint "
            f"trained with data={spec.name}, or set distill.teacher=null."
        )


def load_teacher(path: str | Path) -> nn.Module:
    """The teacher's network, frozen, in eval mode, on the CPU (the student's module moves it to its device)."""
    net = load_module(path, key="distill.teacher").net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
