"""Every check of a training config, run once before any work: one paragraph naming the key for each mistake."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vit_mnist.data.augment import AugmentConfig
from vit_mnist.data.crop_warmup import crop_warmup_from
from vit_mnist.data.datamodule import check_loader_options, check_styles
from vit_mnist.data.sources import ensure_files, get_spec
from vit_mnist.errors import UserError
from vit_mnist.models.registry import network_config
from vit_mnist.ood.detector import VerdictRule, check_verdict_options
from vit_mnist.runtime.hardware import warn_if_slow_bf16
from vit_mnist.training.calibration import check_calibrate_on
from vit_mnist.training.distributed import check_accelerator
from vit_mnist.training.ema import check_ema_options
from vit_mnist.training.outlier_exposure import outlier_exposure_from
from vit_mnist.training.teacher import check_distill
from vit_mnist.training.transfer import check_init_from

# after_fit: what a run does once fitted. full: everything a kept model needs; search: only the test (search trials)
AFTER_FIT = ("full", "search")


def check_model(model_cfg: Any) -> None:
    """`UserError` naming the model.* key when the network cannot be built (the model's own ValueError said)."""
    plain = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    try:
        network_config(plain)
    except ValueError as e:  # the model package speaks plain ValueErrors that name the key
        raise UserError(str(e)) from e


def validate(cfg: DictConfig) -> VerdictRule:
    """Check the parts of a composed training config that would fail late (model shape, dataset, options); return
    the verdict rule its keys make (for the after-fit step, so they are checked here only)."""
    spec = get_spec(cfg.data.name)
    m = cfg.model
    check_model(m)
    if m.num_classes != len(spec.classes) or m.image_size != spec.image_size:
        raise UserError(
            f"model.num_classes={m.num_classes} and model.image_size={m.image_size} do not match "
            f"data={spec.name} ({len(spec.classes)} classes, {spec.image_size}x{spec.image_size}); "
            "leave them at their defaults, which follow the data config."
        )
    check_styles(AugmentConfig(**cfg.data.get("augment", {})), spec)  # the ranges' own checks, then the dataset's
    d = cfg.data
    # a ViT's crop keeps whole tokens on every side (each keeps its position); a CNN pools over any size
    token_pixels = m.patch_size if m.get("arch", "vit") == "vit" else 1
    crop_warmup_from(d.get("crop_warmup")).check(spec.image_size, token_pixels)
    check_loader_options(d.get("batch_size", 64), d.get("eval_batch_size", 100), d.get("val_size", 5000),
                         d.get("num_workers", 0))
    check_training_options(cfg)
    check_loggers(cfg.get("logger"))
    rule = check_verdict_options(cfg)  # the verdicts' detector, fitted after training
    check_calibrate_on(cfg.get("calibrate_on"))  # and the temperature before it
    check_distill(cfg.get("distill"), OmegaConf.to_container(m, resolve=True), spec.name)
    outlier_exposure_from(cfg.get("outlier_exposure"), spec.name)  # its own checks; the pool is made later
    ema = (cfg.get("callbacks") or {}).get("ema")
    if ema:
        check_ema_options(ema.get("decay", 0.999), ema.get("update_starting_at_step"),
                          ema.get("update_starting_at_fraction"))
    return rule


def check_loggers(loggers: Any) -> None:
    """`UserError` for a logger whose library is not installed (MLflow is an optional extra)."""
    for logger in (loggers or {}).values():
        target = str(logger.get("_target_", "")) if isinstance(logger, DictConfig) else ""
        if target.endswith("MLFlowLogger") and importlib.util.find_spec("mlflow") is None:
            raise UserError("logger=mlflow needs MLflow, which is not installed here: pip install "
                            "'vit-mnist[tracking]' (make install includes it), or log with logger=tensorboard.")


def check_training_options(cfg: DictConfig) -> None:
    """`UserError` for a seed, loss or learning-rate schedule option that training would reject late or misuse."""
    seed = cfg.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise UserError(f"seed={seed!r} must be an integer, e.g. seed=42 (or seed=null for a random one).")
    smoothing = (cfg.get("loss") or {}).get("label_smoothing", 0.0)
    if not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise UserError(f"loss.label_smoothing={smoothing!r} must be in [0, 1), e.g. 0.1; 0 turns it off.")
    sched = cfg.get("scheduler") or {}
    for key, low, high in (("warmup_fraction", 0.0, 1.0), ("min_lr_ratio", 0.0, 1.0)):
        value = sched.get(key)
        if value is not None and (not isinstance(value, (int, float)) or not low <= value <= high
                                  or (key == "warmup_fraction" and value == high)):
            bounds = "[0, 1)" if key == "warmup_fraction" else "[0, 1]"
            raise UserError(f"scheduler.{key}={value!r} must be in {bounds}: warmup_fraction is the share of the "
                            "run's steps spent warming up (e.g. 0.05), min_lr_ratio the final learning rate as a "
                            "fraction of optimizer.lr (e.g. 0.01).")
    if sched.get("name", "none") not in ("none", "warmup_cosine"):
        raise UserError(f"Unknown scheduler.name={sched['name']!r}: use `scheduler=none` or `scheduler=warmup_cosine`.")
    after_fit = cfg.get("after_fit", "full")
    if after_fit not in AFTER_FIT:
        raise UserError(f"after_fit={after_fit!r} must be full (calibration, detector, reports, robustness when "
                        "asked: a model to keep) or search (the test only: a search trial, thrown away).")
    images = cfg.get("robustness_images")
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
        raise UserError(f"robustness_images={images!r} must be a positive whole number (the first N test images "
                        "and digits of each digit set), or null for all of them.")


def check_before_run(cfg: DictConfig) -> VerdictRule:
    """Everything that can be checked before work starts: the config, then the dataset files (downloaded if allowed).
    Returns the verdict rule of the config (`validate`)."""
    rule = validate(cfg)
    check_accelerator(cfg.trainer)
    warn_if_slow_bf16(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator", "auto"))
    check_init_from(cfg.model)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(str(ckpt_path)).expanduser().is_file():
        raise UserError(f"ckpt_path={ckpt_path} is not a file: give the path of a checkpoint to resume from, "
                        "e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt.")
    ensure_files(get_spec(cfg.data.name), cfg.paths.data_dir, download=cfg.data.download)
    return rule
