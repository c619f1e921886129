"""Transfer learning: start a network from another run's checkpoint (`model.init_from=<checkpoint>`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from torch import nn

from vit_mnist.errors import UserError
from vit_mnist.models.registry import NAMES, model_arch
from vit_mnist.training.checkpoints import read_checkpoint

log = logging.getLogger(__name__)

# Shapes of the transformer blocks: they must match, everything around them can be adapted.
BLOCK_KEYS = ("hidden_dim", "depth", "heads", "mlp_dim")
# The CNN's conv stack: it must match; only the head (another class count) is re-initialised.
CNN_BLOCK_KEYS = ("widths", "convs_per_block")


def read_source(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The network weights (without the `net.` prefix) and model hyperparameters of a training checkpoint."""
    ckpt = read_checkpoint(path, key="model.init_from", hint=" Or set model.init_from=null to train from scratch.")
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return state, ckpt["hyper_parameters"]["model"]


def check_compatible(source_model: dict[str, Any], target_model: dict[str, Any], path: str | Path) -> None:
    """`UserError` when the checkpoint holds another architecture, or its transformer blocks (conv blocks, for
    the CNN) differ in shape: those weights cannot be carried over."""
    try:
        source_arch, target_arch = model_arch(source_model), model_arch(dict(target_model))  # no arch: a ViT
    except ValueError as e:
        raise UserError(f"model.init_from={path}: {e}") from e
    if source_arch != target_arch:
        raise UserError(
            f"model.init_from={path} holds {NAMES[source_arch]} (model={source_arch}), but this run trains "
            f"{NAMES[target_arch]} (model={target_arch}): weights carry over only between networks of the same "
            f"kind. Give a model={target_arch} checkpoint, add `model={source_arch}` to the command, or set "
            "model.init_from=null to train from scratch."
        )
    if target_arch == "cnn":
        diffs = [k for k in CNN_BLOCK_KEYS if list_or_value(source_model.get(k)) != list_or_value(target_model.get(k))]
        if diffs:
            found = ", ".join(f"model.{k}={source_model.get(k)} there but {list_or_value(target_model.get(k))} here"
                              for k in diffs)
            match = " ".join(f"'model.{k}={source_model.get(k)}'".replace(" ", "") for k in diffs)
            raise UserError(
                f"model.init_from={path} cannot initialise this model: its conv blocks have another shape ({found}). "
                f"The class count may differ, but widths and convs_per_block must match: add {match} to the "
                "command, or set model.init_from=null to train from scratch."
            )
        return
    if prefix_tokens(source_model) != prefix_tokens(dict(target_model)):
        raise UserError(
            f"model.init_from={path} has {prefix_tokens(source_model)} token(s) before its patches and this model "
            f"{prefix_tokens(dict(target_model))} (a CLS token unless model.pool=seq, a distillation token with "
            "model.distill_token=true): the position embeddings cannot be carried over. Match model.pool and "
            "model.distill_token to the checkpoint's, or set model.init_from=null to train from scratch."
        )
    diffs = [k for k in BLOCK_KEYS if source_model.get(k) != target_model.get(k)]
    if diffs:
        found = ", ".join(f"model.{k}={source_model.get(k)} there but {target_model.get(k)} here" for k in diffs)
        match = " ".join(f"model.{k}={source_model.get(k)}" for k in diffs)
        raise UserError(
            f"model.init_from={path} cannot initialise this model: its transformer blocks have another shape "
            f"({found}). Patch size, class count and the stem may differ, but hidden_dim, depth, heads and mlp_dim "
            f"must match: add `{match}` to the command, or set model.init_from=null to train from scratch."
        )


def list_or_value(value: Any) -> Any:
    """A config value comparable with a checkpoint's: lists (also OmegaConf's ListConfig) as plain lists."""
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else value


def interpolate_pos_embed(pos_embed: torch.Tensor, num_tokens: int, prefix: int = 1) -> torch.Tensor:
    """Resize (1, prefix + g*g, D) position embeddings to `num_tokens`: bicubic over the 2-D grid, the `prefix`
    tokens' (CLS, distillation) kept."""
    old, new = int(round((pos_embed.shape[1] - prefix) ** 0.5)), int(round((num_tokens - prefix) ** 0.5))
    if old * old + prefix != pos_embed.shape[1] or new * new + prefix != num_tokens:
        raise ValueError(f"position embeddings of {pos_embed.shape[1]} and {num_tokens} tokens are not {prefix} "
                         "prefix tokens + a square grid")
    cls, grid = pos_embed[:, :prefix], pos_embed[:, prefix:]
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos_embed.dtype)
    return torch.cat([cls, grid], dim=1)


def resize_patch_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (D, C, p, p) patch-embedding kernel to (D, C, size, size) by FlexiViT's pseudo-inverse resize
    (Beyer et al., 2023): the new kernel gives a resized patch the token the old kernel gave the original."""
    old = weight.shape[-1]
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    # Row i: pixel basis image i resized, so resize(x) = resize_matrix.T @ x for a flattened patch x.
    resize_matrix = F.interpolate(basis, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=size < old).reshape(old * old, size * size)
    # <resize(x), w_new> = <x, w> for every x  <=>  resize_matrix @ w_new = w (least squares when shrinking).
    flat = weight.reshape(-1, old * old).double().T
    new = torch.linalg.pinv(resize_matrix) @ flat
    return new.T.reshape(*weight.shape[:2], size, size).to(weight.dtype)


def prefix_tokens(model: dict[str, Any]) -> int:
    """How many tokens come before the patches in a ViT of these hyperparameters: CLS (not with pool=seq), DIST."""
    return int(model.get("pool", "cls") != "seq") + int(bool(model.get("distill_token", False)))


def adapt_state(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], prefix: int = 1
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The source weights reshaped for `target` (a state dict), and notes on what was resized or left out."""
    state, notes, reinit = {}, [], []
    for name, want in target.items():
        have = source.get(name)
        if have is None:
            reinit.append(name)
        elif have.shape == want.shape:
            state[name] = have
        elif name == "pos_embed" and have.shape[-1] == want.shape[-1]:
            state[name] = interpolate_pos_embed(have, want.shape[1], prefix)
            notes.append(f"pos_embed interpolated from {have.shape[1] - prefix} to {want.shape[1] - prefix} patches "
                         "(bicubic, CLS kept)")
        elif name == "patch_embed.proj.weight" and have.shape[:2] == want.shape[:2]:
            state[name] = resize_patch_kernel(have, want.shape[-1])
            notes.append(f"patch kernel resized from {have.shape[-1]}x{have.shape[-1]} to "
                         f"{want.shape[-1]}x{want.shape[-1]} (pseudo-inverse)")
        elif name.startswith(("head.", "head_dist.", "patch_embed.")):
            reinit.append(name)  # another class count, stem or channel count: keep the fresh initialisation
        else:
            raise UserError(f"model.init_from: the checkpoint's {name} has shape {tuple(have.shape)} but this "
                            f"model's has {tuple(want.shape)}, and it cannot be adapted. Use a checkpoint of the "
                            "same architecture, or set model.init_from=null to train from scratch.")
    if reinit:
        notes.append("re-initialised " + ", ".join(reinit))
    unused = sorted(set(source) - set(target))
    if unused:
        notes.append("not used from the checkpoint: " + ", ".join(unused))
    return state, notes


def check_init_from(model_cfg: Any) -> None:
    """Before a run starts: `UserError` when `model.init_from` is set but cannot initialise `model_cfg`."""
    path = model_cfg.get("init_from")
    if path:
        _, source_model = read_source(path)
        check_compatible(source_model, dict(model_cfg), path)


def init_from_checkpoint(net: nn.Module, path: str | Path, target_model: dict[str, Any]) -> str:
    """Load `path`'s network weights into `net`, adapting what differs; return (and log) what was done."""
    source, source_model = read_source(path)
    check_compatible(source_model, target_model, path)
    state, notes = adapt_state(source, net.state_dict(), prefix_tokens(source_model))
    net.load_state_dict(state, strict=False)  # keys left out keep their fresh initialisation
    message = f"model.init_from={path}: loaded {len(state)} of {len(net.state_dict())} tensors"
    message += "; " + "; ".join(notes) if notes else " (all of them unchanged)"
    log.info(message)
    return message
