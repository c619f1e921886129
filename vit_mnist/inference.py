"""Load a trained checkpoint for inference and turn preprocessed images into class probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vit_mnist.errors import UserError
from vit_mnist.module import ViTClassifier
from vit_mnist.preprocess import ImageSource, preprocess

EXAMPLE = "ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt"


def check_checkpoint_path(path: str | Path | None) -> Path:
    """The checkpoint file `path` names, or a `UserError` saying what is wrong with it."""
    if path is None or str(path).strip() in ("", "None", "null"):
        raise UserError(f"ckpt_path is not set: give the checkpoint of a training run, e.g. {EXAMPLE} "
                        "(with `make serve`: CKPT=path/to/best.ckpt).")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        found = [c for c in (p / "checkpoints" / "best.ckpt", p / "best.ckpt") if c.is_file()]  # a run folder?
        hint = f" It holds {found[0]}: pass ckpt_path={found[0]}." if found else ""
        raise UserError(
            f"ckpt_path={path} is a folder, not a checkpoint file.{hint} Give a .ckpt file, e.g. {EXAMPLE}."
        )
    if not p.is_file():
        raise UserError(f"ckpt_path={path} does not exist. Give the checkpoint of a training run, e.g. {EXAMPLE}.")
    return p


def load_checkpoint(path: str | Path | None) -> ViTClassifier:
    """The `ViTClassifier` saved in a checkpoint written by `python -m vit_mnist.train`, on CPU in eval mode."""
    p = check_checkpoint_path(path)
    try:
        # weights_only: a checkpoint is data, so loading it must never run code from the file.
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler fails on foreign bytes with any error type (KeyError, EOF, ...)
        detail = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        raise UserError(
            f"{p} is not a readable vit-mnist checkpoint ({type(e).__name__}: {detail}). The file may be "
            "truncated (a run stopped while saving, an unfinished copy) or something else than a checkpoint; give "
            f"a .ckpt file written by `python -m vit_mnist.train`, e.g. {EXAMPLE}."
        ) from e
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams or "state_dict" not in ckpt:
        raise UserError(
            f"{p} is a PyTorch file but not a vit-mnist checkpoint: it lacks the hyper-parameters and weights "
            f"that `python -m vit_mnist.train` saves. Give one of its .ckpt files, e.g. {EXAMPLE}."
        )
    try:
        module = ViTClassifier(**hparams)
        module.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, KeyError, UserError) as e:
        raise UserError(
            f"The weights in {p} do not fit the model its hyper-parameters describe ({str(e).splitlines()[0]}). "
            f"The file was edited or comes from another version of vit-mnist; retrain or give another checkpoint."
        ) from e
    return module.eval()


class Predictor:
    """A checkpoint's network with its class names and normalisation: images in, probabilities out."""

    def __init__(self, module: ViTClassifier, source: str = ""):
        self.net = module.net.eval()
        self.class_names: list[str] = list(module.class_names)
        normalize = module.hparams.get("normalize") or {}
        if "mean" not in normalize or "std" not in normalize:
            raise UserError(
                f"The checkpoint {source} records no normalisation constants (hparams.normalize); it was not "
                "written by this version's `python -m vit_mnist.train`. Retrain, or give another checkpoint."
            )
        self.mean, self.std = float(normalize["mean"]), float(normalize["std"])
        self.dataset = str(module.hparams.get("dataset", ""))
        self.source = str(source)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None) -> Predictor:
        return cls(load_checkpoint(path), source=str(path))

    def prepare(self, image: ImageSource, layout: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """An image -> (normalised float32 (1, 28, 28), the uint8 (28, 28) the model sees)."""
        return preprocess(image, self.mean, self.std, layout)

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 (B, 1, 28, 28) -> softmax probabilities (B, num_classes) as float64."""
        logits = self.net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return logits.double().softmax(dim=-1).numpy()
