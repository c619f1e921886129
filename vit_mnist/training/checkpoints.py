"""Reading training checkpoints safely: one clear error for each way a checkpoint path or file can be wrong."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch

from vit_mnist.data.sources import get_spec
from vit_mnist.errors import UserError
from vit_mnist.training.module import ViTClassifier

EXAMPLE = "outputs/<date>/<time>/checkpoints/best.ckpt"


def check_checkpoint_path(path: str | Path | None, key: str = "ckpt_path", hint: str = "") -> Path:
    """The checkpoint file `path` names, or a `UserError` saying what is wrong with it (`key` names the setting)."""
    if path is None or str(path).strip() in ("", "None", "null"):
        raise UserError(f"{key} is not set: give the checkpoint of a training run, e.g. {key}={EXAMPLE}.{hint}")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        found = [c for c in (p / "checkpoints" / "best.ckpt", p / "best.ckpt") if c.is_file()]  # a run folder?
        inside = f" It holds {found[0]}: pass {key}={found[0]}." if found else ""
        raise UserError(f"{key}={path} is a folder, not a checkpoint file.{inside} Give a .ckpt file, e.g. {key}={EXAMPLE}.{hint}")
    if not p.is_file():
        raise UserError(f"{key}={path} does not exist. Give the checkpoint of a training run, e.g. {key}={EXAMPLE}.{hint}")
    return p


def read_checkpoint(path: str | Path | None, key: str = "ckpt_path", hint: str = "") -> dict[str, Any]:
    """A vit-mnist training checkpoint's contents on the CPU; a `UserError` for anything else."""
    file = check_checkpoint_path(path, key, hint)
    try:
        # weights_only: a checkpoint is data, so loading it must never run code from the file.
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and weights-only errors all mean the same to the user
        with open(file, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # torch.save writes zip archives
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        reason = (re.split(r"(?<=\.)\s", first_line)[0].rstrip(".")[:160] if is_zip  # its first sentence
                  else "it is not the zip archive that torch.save writes")
        raise UserError(
            f"{key}={path} is not a readable vit-mnist checkpoint ({reason}): the file is truncated, corrupt or "
            f"not a checkpoint. If training was still writing it, wait for it to finish; otherwise give a .ckpt "
            f"file written by `python -m vit_mnist.train`, e.g. {key}={EXAMPLE}.{hint}"
        ) from e
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not (isinstance(hparams, dict) and isinstance(hparams.get("model"), dict) and "state_dict" in ckpt):
        raise UserError(
            f"{key}={path} is a PyTorch file but not a vit-mnist training checkpoint: it lacks the model "
            f"hyperparameters and weights that `python -m vit_mnist.train` saves. Give e.g. {key}={EXAMPLE}.{hint}"
        )
    return ckpt


def check_matches_data(ckpt: dict[str, Any], data_name: str, path: str | Path) -> None:
    """`UserError` unless the checkpoint was trained on dataset `data_name` (same classes and image size)."""
    spec = get_spec(data_name)
    hparams = ckpt["hyper_parameters"]
    trained_on = hparams.get("dataset")
    if trained_on and trained_on != spec.name:
        raise UserError(
            f"ckpt_path={path} was trained on {trained_on}, but data={spec.name} was chosen: a model can only be "
            f"evaluated on the dataset it learned, whose classes its outputs stand for. Leave out `data=` to "
            f"evaluate on the checkpoint's own dataset (data={trained_on})."
        )
    model = hparams["model"]
    shape = (model.get("num_classes"), model.get("image_size"), model.get("in_channels", 1))
    names = hparams.get("class_names")
    if shape != (len(spec.classes), spec.image_size, 1) or (names and list(names) != list(spec.classes)):
        raise UserError(
            f"ckpt_path={path} holds a model for {shape[0]} classes {names or ''} of {shape[1]}x{shape[1]} images "
            f"with {shape[2]} channel(s), but data={spec.name} has the {len(spec.classes)} classes "
            f"{list(spec.classes)} of {spec.image_size}x{spec.image_size} images with 1 channel. Evaluate the "
            f"checkpoint on the dataset it was trained on."
        )


def trained_dataset(ckpt: dict[str, Any]) -> str:
    """The dataset a checkpoint was trained on (checkpoints from before it was recorded: MNIST)."""
    recorded = ckpt.get("datamodule_hyper_parameters") or {}
    return str(ckpt["hyper_parameters"].get("dataset") or recorded.get("name") or "mnist")


def module_from_checkpoint(ckpt: dict[str, Any], path: str | Path, key: str = "ckpt_path",
                           warn_uncalibrated: bool = True) -> ViTClassifier:
    """The `ViTClassifier` whose hyperparameters, weights and temperature `ckpt` (read by `read_checkpoint`) holds, on
    the CPU in eval mode; a `UserError` when they do not fit together."""
    try:
        module = ViTClassifier(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, KeyError, ValueError, UserError) as e:
        raise UserError(
            f"The weights in {key}={path} do not fit the model its hyperparameters describe "
            f"({str(e).splitlines()[0]}). The file was edited or comes from another version of vit-mnist; "
            "retrain or give another checkpoint."
        ) from e
    # temperature 1 for checkpoints without one, said once (not while the train job is calibrating this one)
    module.load_calibration(ckpt, source=str(path), warn=warn_uncalibrated)
    module.load_detector(ckpt)  # the out-of-domain detector and verdict thresholds, when it has them
    return module.eval()


def load_module(path: str | Path | None, key: str = "ckpt_path") -> ViTClassifier:
    """The `ViTClassifier` saved in a training checkpoint, on the CPU in eval mode."""
    return module_from_checkpoint(read_checkpoint(path, key), path, key)


def write_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Replace the checkpoint file `path` with `ckpt` atomically (a reader sees the old file or the new one, never
    half of one), keeping the file's permissions."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
