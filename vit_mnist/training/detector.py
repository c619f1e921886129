"""After training: fit the out-of-domain detector and the verdict thresholds, and store them in the best checkpoint."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from vit_mnist.errors import UserError
from vit_mnist.models.outputs import has_features
from vit_mnist.ood.detector import (
    CHECKPOINT_KEY,
    DEFAULT_SCORE,
    check_score,
    fit_data_from,
    fit_detector,
    split_fit_data,
)
from vit_mnist.ood.scores import SCORES
from vit_mnist.training.calibration import network_outputs
from vit_mnist.training.checkpoints import (
    module_from_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from vit_mnist.training.module import ViTClassifier

log = logging.getLogger(__name__)


def fit_and_store(trainer: L.Trainer, module: ViTClassifier, datamodule: Any, ckpt_path: str = "",
                  score: str | None = None, limit: int | None = None) -> dict[str, Any] | None:
    """Fit the detector on the weights (and temperature) of `ckpt_path` (else the in-memory `module`) and store it
    in that file; return it as a state, or None when the run's data gives nothing to fit on."""
    ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
    scorer = module_from_checkpoint(ckpt, ckpt_path, warn_uncalibrated=False) if ckpt is not None else module
    score = check_score(score) or DEFAULT_SCORE
    if SCORES[score].needs_features and not has_features(scorer.net):
        score = "energy"  # a network from elsewhere without features: a score of the logits
    try:
        train, val = fit_data_from(datamodule)
        stats, held, where = split_fit_data(train, val, limit)
        detector = fit_detector(network_outputs(trainer, scorer, datamodule, SCORES[score].needs_features), stats, held,
                                scorer.hparams.model.get("num_classes", 10), score, scorer.temperature)
    except (UserError, ValueError) as e:
        log.warning("No out-of-domain detector for this run (%s): its answers get no out_of_domain verdict.", e)
        return None
    detector.info["fitted_on"] = where
    state = detector.state_dict()
    if ckpt is not None:
        ckpt[CHECKPOINT_KEY] = state
        write_checkpoint(ckpt, ckpt_path)
    log.info("Out-of-domain detector: %s; %s; out_of_domain above %.4g, unsure below %.4f", detector.describe(),
             where, detector.ood_threshold, detector.unsure_threshold)
    return state


def fit_verdicts(trainer: L.Trainer, module: ViTClassifier, datamodule: Any, ckpt_path: str = "",
                 score: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """After calibration: fit the detector on global rank zero, store it in the best checkpoint so that testing it
    and every later load (predict, the API, serve) have it, and give it to `module` on every rank. Returns the
    `verdict/*` metrics."""
    state = fit_and_store(trainer, module, datamodule, ckpt_path, score, limit) if trainer.is_global_zero else None
    state = trainer.strategy.broadcast(state, src=0)  # also the barrier: the file is written
    module.load_detector({CHECKPOINT_KEY: state} if state is not None else {})
    if state is None:
        return {}
    return {"verdict/score": state["score"], "verdict/ood_threshold": state["ood_threshold"],
            "verdict/unsure_threshold": state["unsure_threshold"]}
