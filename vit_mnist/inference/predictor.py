"""Load a trained checkpoint for inference and turn preprocessed images into class probabilities."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vit_mnist.data.preprocess import ImageSource, preprocess
from vit_mnist.data.sources import is_handwritten
from vit_mnist.errors import UserError
from vit_mnist.models.outputs import logits_and_features
from vit_mnist.ood.detector import VERDICTS
from vit_mnist.ood.thresholds import MIN_CONFIDENCE
from vit_mnist.training.checkpoints import load_module
from vit_mnist.training.module import ViTClassifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answers:
    """What the model says about a batch: calibrated probabilities (B, K) and a verdict for each image."""

    probabilities: np.ndarray  # float64 (B, K), softmax(logits / temperature)
    verdicts: list[str]  # "confident", "unsure" or "out_of_domain" (vit_mnist.ood.detector.VERDICTS)


def kind_of_image(dataset: str, handwritten: bool) -> str:
    """What the model's images are, for the verdict's words: "digit", "garment" or "image of its classes"."""
    return "digit" if handwritten else "garment" if "fashion" in dataset.lower() else "image of its classes"


def verdict_message(verdict: str, candidates: list[str], kind: str) -> str:
    """The verdict in a sentence for people: empty when the answer stands."""
    if verdict == "out_of_domain":
        return f"That doesn't look like a {kind}."
    if verdict == "unsure":
        return f"Not sure: {' or '.join(candidates)}?"
    return ""


class Predictor:
    """A checkpoint's network (ViT or CNN) with its class names and normalisation: images in, probabilities out.

    The probabilities are the test metrics': logits averaged over test-time shifts when the checkpoint's run has
    `tta: true`, divided by the checkpoint's fitted temperature (1 for a checkpoint without one), softmax."""

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
        self.handwritten = is_handwritten(self.dataset)  # users' images get MNIST's layout
        self.arch = module.arch  # "vit" or "cnn": which network the checkpoint holds
        self.tta = bool(module.hparams.get("tta", False))
        self.temperature = float(module.temperature)
        self.source = str(source)
        # The verdicts' detector (fitted after training); without one, `unsure` below MIN_CONFIDENCE only.
        self.detector = module.ood_detector
        self.kind = kind_of_image(self.dataset, self.handwritten)
        if self.detector is None:
            log.warning("The checkpoint %s holds no out-of-domain detector (it was trained before verdicts existed, "
                        "or with verdicts=false): no answer is called out_of_domain, and `unsure` means a top "
                        "probability below %.2f. `python -m vit_mnist.calibrate ckpt_path=%s` fits the detector (and the "
                        "temperature) into it from the data it was trained on, no retraining needed.", self.source,
                        MIN_CONFIDENCE, self.source)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None) -> Predictor:
        return cls(load_module(path), source=str(path))

    def prepare(self, image: ImageSource, layout: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """An image -> (normalised float32 (1, 28, 28), the uint8 (28, 28) the model sees)."""
        return preprocess(image, self.mean, self.std, layout, self.handwritten)

    def _outputs(self, batch: np.ndarray, features: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalised float32 (B, 1, 28, 28) -> the logits the test metrics use (test-time shifts included), the
        calibrated float64 probabilities, and the detector's features when asked."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        logits, feats = logits_and_features(self.net, x, self.tta, features)
        return logits, (logits.double() / self.temperature).softmax(dim=-1), feats

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 (B, 1, 28, 28) -> calibrated softmax probabilities (B, num_classes) as float64."""
        return self._outputs(batch, features=False)[1].numpy()

    @torch.inference_mode()
    def answer(self, batch: np.ndarray) -> Answers:
        """Normalised float32 (B, 1, 28, 28) -> calibrated probabilities and a verdict for each image."""
        logits, probs, feats = self._outputs(batch, self.detector is not None and self.detector.needs_features)
        if self.detector is None:
            verdicts = [VERDICTS[1] if p < MIN_CONFIDENCE else VERDICTS[0] for p in probs.max(dim=-1).values.tolist()]
        else:
            verdicts = self.detector.verdicts(probs, self.detector.scores(logits.double(), feats))
        return Answers(probs.numpy(), verdicts)

    def candidates(self, probabilities: np.ndarray, verdict: str) -> list[str]:
        """The two most probable class names of an `unsure` answer (empty otherwise), most probable first."""
        if verdict != "unsure":
            return []
        return [self.class_names[i] for i in np.argsort(-probabilities, kind="stable")[:2]]

    def message(self, probabilities: np.ndarray, verdict: str) -> str:
        """The verdict in a sentence for people (empty for `confident`)."""
        return verdict_message(verdict, self.candidates(probabilities, verdict), self.kind)

