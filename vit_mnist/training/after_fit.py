"""After fitting, one step: the temperature (Guo et al., 2017) and the out-of-domain detector, fitted on the best
checkpoint's weights and written into it once, then given to the module on every rank."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import lightning as L
import torch

from vit_mnist.data.image_cache import cached_non_digits
from vit_mnist.data.non_digits import load_non_digit_sets
from vit_mnist.data.writer_shift import writer_shifted
from vit_mnist.errors import UserError
from vit_mnist.models.outputs import has_features
from vit_mnist.ood.detector import (
    CHECKPOINT_KEY,
    UNSURE_ON,
    VERDICT_KEYS,
    ConfidenceDigits,
    VerdictRule,
    fit_data_from,
    fit_detector,
    split_fit_data,
)
from vit_mnist.ood.scores import SCORES
from vit_mnist.training.calibration import (
    CALIBRATE_ON,
    METHOD,
    fit_temperature_on,
    network_outputs,
    nll,
)
from vit_mnist.training.checkpoints import (
    module_from_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from vit_mnist.training.module import ViTClassifier

log = logging.getLogger(__name__)

CHECK_IMAGES = 100  # of each non-digit set, that the detector's acceptance is checked on (loosest_acceptance)

# The after-fit keys a checkpoint was fitted with (the train and calibrate configs' names), stored beside what they
# made, so that a refit (vit_mnist.calibrate) repeats them where its command line leaves a key out.
RULE_KEY = "after_fit_rule"


def rule_keys(calibrate_on: str | None, rule: VerdictRule | None) -> dict[str, Any]:
    """The config keys of a fit: `calibrate_on` when the temperature was fitted, the verdict keys when a detector
    was."""
    return {**({} if calibrate_on is None else {"calibrate_on": calibrate_on}),
            **({} if rule is None else rule.config_keys())}


def keys_or_recorded(cfg: Any, recorded: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The after-fit keys of `cfg`, each one it leaves null taken from a checkpoint's `recorded` keys (RULE_KEY; a key
    neither gives stays null: its default), and the names of those taken."""
    recorded = recorded if isinstance(recorded, dict) else {}
    keys, taken = {}, []
    for key in ("calibrate_on", *VERDICT_KEYS):
        keys[key] = cfg.get(key)
        if keys[key] is None and recorded.get(key) is not None:
            keys[key] = recorded[key]
            taken.append(key)
    return keys, taken


def images_validation_sees(trainer: L.Trainer, datamodule: Any) -> int | None:
    """How many validation images the fit's validation loop saw (limit_val_batches, fast_dev_run); None: all."""
    batches = [b for b in (getattr(trainer, "num_val_batches", None) or []) if math.isfinite(b)]
    if not batches:
        return None
    batch_size = int(datamodule.hparams.get("eval_batch_size", 100))
    return int(sum(batches)) * batch_size * max(1, int(trainer.world_size))


def threshold_check_images(datamodule: Any, limit: int | None = None, cache_dir: str | None = None
                           ) -> torch.Tensor | None:
    """Non-digit images for checking the detector's acceptance: CHECK_IMAGES (at most `limit`) of each set outside
    the data's domain, from their `thresholds` streams (never a benchmark's or an outlier pool's); None when the
    data module names no dataset or no set can be made. Made once and read from `cache_dir` by later runs, as the
    outlier pool is (None: made every time)."""
    spec = getattr(datamodule, "spec", None)
    if spec is None:
        return None
    sets, _ = load_non_digit_sets(spec.name, getattr(datamodule, "data_dir", None),
                                  min(CHECK_IMAGES, limit or CHECK_IMAGES), split="thresholds",
                                  make=cached_non_digits(cache_dir))
    return torch.cat(list(sets.values())) if sets else None


def fit_after_training(trainer: L.Trainer, module: ViTClassifier, datamodule: Any, ckpt_path: str = "", *,
                       calibrate: bool = True, verdicts: bool = True, rule: VerdictRule | None = None,
                       limit: int | None = None, cache_dir: str | None = None, calibrate_on: str = "clean"
                       ) -> dict[str, Any]:
    """After `trainer.fit`: on global rank zero, the temperature (`calibrate`, fitted on what `calibrate_on` names:
    a CALIBRATE_ON key, checked by `check_calibrate_on`) and then the detector at that
    temperature (`verdicts`, fitted by `rule`, the config's verdict keys as `check_verdict_options` made them;
    None: the defaults), from the weights of `ckpt_path` (else the in-memory `module`), stored in that file in one
    write; on every rank, both given to `module`. The detector's non-digit check images are cached in `cache_dir`
    (`threshold_check_images`). Returns the `calibration/*` and `verdict/*` metrics."""
    fitted = _fit(trainer, module, datamodule, ckpt_path, calibrate_on if calibrate else None, verdicts,
                  rule or VerdictRule(), limit, cache_dir) if trainer.is_global_zero else None
    calibration, detector = trainer.strategy.broadcast(fitted or (None, None), src=0)  # also the barrier: written
    metrics: dict[str, Any] = {}
    if calibrate:
        module.set_calibration(calibration)
        if calibration is not None:
            metrics.update({"calibration/temperature": calibration["temperature"],
                            "calibration/val_nll": calibration["val_nll"],
                            "calibration/val_nll_raw": calibration["val_nll_raw"]})
    if verdicts:
        module.load_detector({CHECKPOINT_KEY: detector} if detector is not None else {})
        if detector is not None:
            metrics.update({"verdict/score": detector["score"], "verdict/ood_threshold": detector["ood_threshold"],
                            "verdict/unsure_threshold": detector["unsure_threshold"],
                            "verdict/digit_acceptance": detector["info"].get("digit_acceptance")})
    return metrics


def _fit(trainer: L.Trainer, module: ViTClassifier, datamodule: Any, ckpt_path: str, calibrate: str | None,
         verdicts: bool, rule: VerdictRule, limit: int | None, cache_dir: str | None
         ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(calibration, detector state), each None when not asked for or nothing to fit on; written into `ckpt_path`.
    `calibrate`: what the temperature is fitted on (a CALIBRATE_ON key), None for no temperature.

    One pass of the network over the validation images serves both: the temperature is fitted on those the fit's
    validation loop saw (with `noisy`, also on noisy copies of half of them), the detector's thresholds on the first of them
    (its `split_fit_data`)."""
    ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
    scorer = module_from_checkpoint(ckpt, ckpt_path, warn_uncalibrated=False) if ckpt is not None else module
    score = rule.score
    if SCORES[score].needs_features and not has_features(scorer.net):
        score = "energy"  # a network from elsewhere without features: a score of the logits
    features = verdicts and SCORES[score].needs_features
    outputs = network_outputs(trainer, scorer, datamodule, features)
    val = getattr(datamodule, "val_set", None)
    has_val = val is not None and len(val) > 0
    plan = None
    if verdicts:
        try:
            train, val_data = fit_data_from(datamodule)
            # verdict_stats_on=writer_shift: the statistics' digits also drawn as other writers' (a feature score's)
            shifted = (partial(writer_shifted, seed=1, strength=rule.shift_strength)
                       if rule.stats_on == "writer_shift" and features else None)
            plan = split_fit_data(train, val_data, limit, also_shifted=shifted)
        except UserError as e:
            log.warning("No out-of-domain detector for this run (%s): its answers get no out_of_domain verdict.", e)
    calibration_n = images_validation_sees(trainer, datamodule) if calibrate and has_val else 0
    threshold_n = len(plan[1].labels) if plan is not None and has_val else 0
    needed = max((calibration_n or len(val)) if calibrate and has_val else 0, threshold_n)
    held = outputs(val.images[:needed]) if needed else (None, None)

    calibration = None
    if calibrate and not has_val:
        log.warning("No validation images: the model is not calibrated (temperature 1).")
    elif calibrate:
        logits, labels = held[0][:calibration_n or None], val.labels[:calibration_n or None].long().cpu()
        temperature = fit_temperature_on(calibrate, logits, labels, val.images, lambda x: outputs(x)[0])
        calibration = {"temperature": temperature, "method": METHOD, "split": "val", "num_images": len(labels),
                       "fitted_on": CALIBRATE_ON[calibrate], "tta": bool(module.hparams.get("tta", False)),
                       "val_nll": nll(logits, labels, temperature), "val_nll_raw": nll(logits, labels)}
        scorer.set_calibration(calibration)
        log.info("Calibrated on %d %s: temperature %.4f, validation NLL %.4f -> %.4f", len(labels),
                 CALIBRATE_ON[calibrate], temperature, calibration["val_nll_raw"], calibration["val_nll"])

    state = None
    if plan is not None:
        stats, thresholds, where = plan
        where = rule.shifted(where)
        reuse = (held[0][:threshold_n], None if held[1] is None else held[1][:threshold_n]) if threshold_n else None
        confidence_on = None
        if rule.unsure_on == "writer_shift":  # the same digits, drawn as another writer might have made them
            shifted_logits = outputs(writer_shifted(thresholds.images, strength=rule.shift_strength))[0]
            confidence_on = ConfidenceDigits(shifted_logits, thresholds.labels, rule.shifted(UNSURE_ON[rule.unsure_on]))
        try:
            detector = fit_detector(outputs, stats, thresholds, scorer.hparams.model.get("num_classes", 10), score,
                                    scorer.temperature, held_outputs=reuse,
                                    outliers=threshold_check_images(datamodule, limit, cache_dir),
                                    confidence_on=confidence_on,
                                    flat_gate=rule.flat_gate, max_acceptance=rule.max_acceptance)
        except (UserError, ValueError) as e:
            log.warning("No out-of-domain detector for this run (%s): its answers get no out_of_domain verdict.", e)
        else:
            detector.info["fitted_on"] = where
            if "writer_shift" in (rule.unsure_on, rule.stats_on):
                detector.info["shift_strength"] = rule.shift_strength
            state = detector.state_dict()
            log.info("Out-of-domain detector: %s; %s; %s (%.1f%% of the digits accepted)", detector.describe(), where,
                     detector.describe_thresholds(), 100 * detector.info["digit_acceptance"])
    if ckpt is not None and (calibration is not None or state is not None):
        if calibration is not None:
            ckpt["calibration"] = calibration
        if state is not None:
            ckpt[CHECKPOINT_KEY] = state
        made = rule_keys(calibrate if calibration is not None else None, rule if state is not None else None)
        ckpt[RULE_KEY] = {**(ckpt.get(RULE_KEY) or {}), **made}  # a refit of one of the two keeps the other's
        write_checkpoint(ckpt, ckpt_path)
    return calibration, state
