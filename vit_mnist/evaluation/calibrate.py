"""Calibrate an existing checkpoint: the temperature and the out-of-domain detector fitted into it from the data it
recorded, as a training run does right after fitting (vit_mnist.training.after_fit)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vit_mnist.errors import UserError
from vit_mnist.evaluation.checkpoint_data import checked_dataset, checkpoint_datamodule
from vit_mnist.ood.detector import CHECKPOINT_KEY, check_verdict_options
from vit_mnist.reports.files import write_json
from vit_mnist.runtime.build import build_trainer
from vit_mnist.training.after_fit import RULE_KEY, fit_after_training, keys_or_recorded
from vit_mnist.training.calibration import check_calibrate_on
from vit_mnist.training.checkpoints import module_from_checkpoint, read_checkpoint
from vit_mnist.training.distributed import check_accelerator

log = logging.getLogger(__name__)


def calibrate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Fit the temperature (`calibrate`) and the detector (`verdicts`) into `cfg.ckpt_path`; the file is rewritten
    once, atomically, when the fits are done, and not at all when anything fails before. Returns the metrics."""
    started = time.perf_counter()
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError("No checkpoint to calibrate: add ckpt_path=... to the command, e.g. "
                        "ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt (a checkpoint of `python -m "
                        "vit_mnist.train`).")
    if not (cfg.get("calibrate", True) or cfg.get("verdicts", True)):
        raise UserError("calibrate=false and verdicts=false leave nothing to fit: drop one of them.")
    check_verdict_options(cfg)  # the command line's keys, refused before any file is read
    check_calibrate_on(cfg.get("calibrate_on"))
    check_accelerator(cfg.trainer)
    path = str(Path(str(cfg.ckpt_path)).expanduser())
    ckpt = read_checkpoint(path)
    # the rule: the command line's keys, and for each it leaves out the one the checkpoint was fitted with
    keys, recorded = keys_or_recorded(cfg, ckpt.get(RULE_KEY))
    rule, calibrate_on = check_verdict_options(keys), check_calibrate_on(keys["calibrate_on"])
    if recorded:
        log.info("As the checkpoint was fitted: %s (a key on the command line replaces one)",
                 " ".join(f"{key}={keys[key]}" for key in recorded))
    elif RULE_KEY not in ckpt and (ckpt.get("calibration") or ckpt.get(CHECKPOINT_KEY)):
        log.warning("%s was fitted before checkpoints recorded their after-fit keys: those not on the command line "
                    "take conf/verdict/default.yaml's defaults, which may not be the recipe's (a `fast` checkpoint: "
                    "calibrate_on=noisy verdict_unsure_on=writer_shift verdict_shift_strength=0.25; "
                    "docs/deployment.md).", path)
    datamodule = checkpoint_datamodule(ckpt, checked_dataset([(path, ckpt)], cfg.data), cfg.data)
    datamodule.prepare_data()  # missing data files fail here, before anything is written
    datamodule.setup("fit")
    module = module_from_checkpoint(ckpt, path, warn_uncalibrated=False)
    trainer = build_trainer(cfg.trainer, [], [], devices=1, num_nodes=1, enable_progress_bar=False,
                            enable_model_summary=False)
    metrics: dict[str, Any] = {"ckpt_path": path}
    metrics.update(fit_after_training(trainer, module, datamodule, path, calibrate=bool(cfg.get("calibrate", True)),
                                      verdicts=bool(cfg.get("verdicts", True)), rule=rule,
                                      cache_dir=OmegaConf.select(cfg, "paths.cache_dir"), calibrate_on=calibrate_on))
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    said = []
    if cfg.get("calibrate", True):
        temperature = metrics.get("calibration/temperature")
        said.append(f"temperature {temperature:.4f}" if temperature else "no temperature (no validation images)")
    if cfg.get("verdicts", True):
        said.append(f"out-of-domain detector ({metrics['verdict/score']})" if "verdict/score" in metrics
                    else "no out-of-domain detector (see the log)")
    print(f"{path}: {', '.join(said)}")
    return metrics
