"""The training job: fit, test the best checkpoint, write the run's metrics and reports; returns the metrics."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vit_mnist.errors import UserError
from vit_mnist.ood.detector import VerdictRule
from vit_mnist.reports.classification import (
    summary_metrics,
    tensorboard_writers,
    write_test_reports,
)
from vit_mnist.reports.files import write_json
from vit_mnist.runtime.build import build_trainer, instantiate_group
from vit_mnist.runtime.cluster import resume_checkpoint
from vit_mnist.runtime.console import NetworkSummary
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.sweeps.pruning import trial_reporter
from vit_mnist.training.after_fit import fit_after_training
from vit_mnist.training.callbacks import TrainThroughput
from vit_mnist.training.checks import check_before_run
from vit_mnist.training.distributed import RankSeed, hydra_ddp_job
from vit_mnist.training.module import ViTClassifier
from vit_mnist.training.outlier_exposure import outlier_exposure_from
from vit_mnist.training.teacher import load_teacher
from vit_mnist.training.transfer import init_from_checkpoint

log = logging.getLogger(__name__)

# metrics.json keys that the TensorBoard HParams tab and the printed summary show, when the run has them
HPARAM_METRICS = ("val/acc_best", "test/acc", "test/f1_macro", "test/mca", "test/mca_unseen", "test/other_writers",
                  "test/pen_photos")
SUMMARY_KEYS = ("status", "val/acc_best", "test/acc", "test/f1_macro", "test/loss", "test/ece",
                "calibration/temperature", "test/mca", "test/mca_unseen",
                "test/other_writers", "test/pen_photos", "num_parameters", "epochs", "train_images_per_s",
                "teacher_share", "wall_time_s", "after_fit_time_s", "best_checkpoint")


def hparams_to_log(cfg: DictConfig, num_parameters: int) -> dict[str, Any]:
    """The flat hyperparameters that the TensorBoard HParams tab compares runs by."""
    params = {
        "data": cfg.data.name,
        "seed": cfg.seed,
        "max_epochs": cfg.trainer.max_epochs,
        "batch_size": cfg.data.batch_size,
        "label_smoothing": cfg.loss.label_smoothing,
        "scheduler": cfg.scheduler.name,
        "optimizer": str(cfg.optimizer._target_).rsplit(".", 1)[-1],
        "num_parameters": num_parameters,
    }
    params.update({f"model/{k}": v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
                   if isinstance(v, (int, float, str, bool))})
    params.update({f"optimizer/{k}": v for k, v in cfg.optimizer.items() if isinstance(v, (int, float))})
    return params


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, ViTClassifier]:
    """The datamodule and the LightningModule a config describes."""
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    oe = outlier_exposure_from(cfg.get("outlier_exposure"), cfg.data.name)
    pool = oe.pool(cfg.data.name) if oe is not None else None
    if pool is not None:  # each training batch gets non-digits (each rank draws its own from the same pool)
        datamodule.attach_outliers(pool)
    module = ViTClassifier(
        model=cfg.model,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        label_smoothing=cfg.loss.label_smoothing,
        class_names=datamodule.class_names,
        normalize={"mean": datamodule.mean, "std": datamodule.std},
        dataset=cfg.data.name,
        tta=bool(cfg.get("tta", False)),
        distill=cfg.get("distill"),
        outlier_exposure=oe.hparams(pool) if pool is not None else None,
    )
    if module.hparams.distill:
        module.attach_teacher(load_teacher(module.hparams.distill["teacher"]))
    if cfg.model.get("init_from"):
        init_from_checkpoint(module.net, cfg.model.init_from, module.hparams.model)
    if cfg.model.get("compile"):
        compile_network(module.net, cfg.model.compile)
    return datamodule, module


def compile_network(net: torch.nn.Module, setting: bool | str) -> None:
    """torch.compile `net` in place (its state_dict keys, so checkpoints, stay the same): `model.compile=true`
    uses inductor; one of inductor's modes (torch._inductor.list_mode_options(); `reduce-overhead`: CUDA graphs on a
    GPU, which the fixed training batches allow) uses inductor in that mode; a backend name (e.g.
    `model.compile=aot_eager`) picks another."""
    import torch._inductor  # its list of modes; imported only when something is compiled

    modes = list(torch._inductor.list_mode_options())
    if setting is True or setting in modes:
        net.compile(backend="inductor", mode=None if setting is True else str(setting))
        return
    if str(setting) not in torch.compiler.list_backends(exclude_tags=()):
        raise UserError(f"model.compile={setting!r} is not a torch.compile backend or mode: use model.compile=true "
                        f"(inductor), false, one of inductor's modes {modes}, or one of the backends "
                        f"{torch.compiler.list_backends()}.")
    net.compile(backend=str(setting))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Check the config once, then fit, test with the best checkpoint, write `metrics.json` and reports; return
    the metrics. Under DDP every rank runs it (vit_mnist.training.distributed)."""
    rule = check_before_run(cfg)
    with hydra_ddp_job():
        return _fit_and_test(cfg, rule)


def _fit_and_test(cfg: DictConfig, rule: VerdictRule) -> dict[str, Any]:
    started = time.perf_counter()
    seed = L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module = build(cfg)
    throughput = TrainThroughput()
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = [c for c in instantiate_group(cfg.get("callbacks")) + [throughput, RankSeed(seed)]
                 if loggers or not isinstance(c, LearningRateMonitor)]  # it refuses to run without a logger
    if cfg.trainer.get("enable_model_summary", True) and not any(isinstance(c, ModelSummary) for c in callbacks):
        callbacks.append(NetworkSummary())  # also without a callbacks group (debug=fdr): the network, no metrics
    if cfg.get("robustness") and cfg.get("test") and cfg.get("after_test") and cfg.get("after_fit", "full") == "full":
        callbacks.append(hydra.utils.instantiate(cfg.after_test, corruptions=suite_config(cfg),
                                                 augment=cfg.data.get("augment")))
    trainer = build_trainer(cfg.trainer, callbacks, loggers)
    reporter = trial_reporter(trainer.world_size)  # an Optuna trial's job: val/acc to its trial, stop when pruned
    if reporter is not None:
        trainer.callbacks.append(reporter)
    log_config(cfg, loggers)
    # a requeued cluster job goes on from its own last.ckpt rather than from epoch 0
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg))
    if trainer.interrupted:
        raise SystemExit(130)  # Ctrl+C: Lightning already stopped cleanly
    fitted = time.perf_counter()

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    val_best = module.val_acc_best.compute().item() if module.val_acc_best.update_count else math.nan
    metrics: dict[str, Any] = {"val/acc_best": val_best}
    # after_fit=search (search trials): the test only; a pruned trial not even that
    keep = cfg.get("after_fit", "full") == "full"
    if reporter is not None and reporter.pruned:
        metrics.update(status="pruned", reason=reporter.reason(trainer.current_epoch, cfg.trainer.get("max_epochs")))
    else:
        calibrate, verdicts = keep and cfg.get("calibrate", True), keep and cfg.get("verdicts", True)
        if calibrate or verdicts:  # into the best checkpoint, before it is tested
            metrics.update(timed(metrics, "calibration_and_detector", fit_after_training, trainer, module, datamodule, best,
                                 calibrate=calibrate, verdicts=verdicts, rule=rule,
                                 calibrate_on=cfg.get("calibrate_on") or "clean",
                                 limit=cfg.get("robustness_images"),
                                 cache_dir=OmegaConf.select(cfg, "paths.cache_dir")))
        if cfg.get("test"):
            module.warn_uncalibrated = calibrate  # its own choice, not an old checkpoint
            timed(metrics, "test", trainer.test, module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update(summary_metrics(trainer.callback_metrics, module.test_results))  # as evaluate writes them
            for callback in trainer.callbacks:  # what ran after the test (the robustness benchmark) on rank zero
                metrics.update(getattr(callback, "run_metrics", {}))
    metrics.update(
        {
            "num_parameters": module.num_parameters,
            "arch": module.arch,  # vit or cnn: which network the run trained
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "train_images_per_s": round(throughput.images_per_second, 1),
            "train_time_s": round(throughput.train_time, 2),
            "wall_time_s": round(time.perf_counter() - started, 2),
            "best_checkpoint": best,
            "device": str(trainer.strategy.root_device),
        }
    )
    if module.hparams.distill:  # the teacher's forward passes inside the training loop, and their share of it
        metrics["teacher_time_s"] = round(module.teacher_time_s, 2)
        metrics["teacher_share"] = round(module.teacher_time_s / throughput.train_time, 4) if throughput.train_time else None
    if trainer.is_global_zero:
        finish_run(cfg, Path(cfg.paths.output_dir), module, metrics, trainer.loggers, trainer.global_step, fitted)
    return metrics


def timed(metrics: dict[str, Any], name: str, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one after-fit step, its seconds into `metrics[<name>_time_s]`; return what it returned."""
    started = time.perf_counter()
    result = step(*args, **kwargs)
    metrics[f"{name}_time_s"] = round(time.perf_counter() - started, 2)
    return result


def log_config(cfg: DictConfig, loggers: list) -> None:
    """The run's whole config as flat `model.depth`-style params, for the loggers that keep params (MLflow)."""
    tracked = [logger for logger in loggers if isinstance(logger, MLFlowLogger)]
    if tracked:
        params = flat_config(OmegaConf.to_container(cfg, resolve=True))
        for logger in tracked:
            logger.log_hyperparams(params)


def flat_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {"model.depth": 4, ...} (a list stays one value: the logger writes its text)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flat_config(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return flat


def suite_config(cfg: DictConfig) -> Any:
    """The corruption table of a run's config (conf/corruptions/), or the packaged one for run configs written
    before the table was a config group."""
    return cfg.get("corruptions") or OmegaConf.load(CONFIG_DIR / "corruptions" / "default.yaml")


@rank_zero_only
def finish_run(cfg: DictConfig, out_dir: Path, module: ViTClassifier, metrics: dict, loggers: list, step: int,
               fitted: float | None = None) -> None:
    """Rank zero: the test reports (with after_fit=search, without their figures), metrics.json, TensorBoard hparams,
    a summary."""
    keep = cfg.get("after_fit", "full") == "full"
    if module.test_results:
        timed(metrics, "reports", write_test_reports, module.test_results, out_dir, module.class_names, loggers,
              step, map_title=module.map_title, figures=keep)
    if fitted is not None:  # from the end of the fit to here: what a run spends on a fitted model
        metrics["after_fit_time_s"] = round(time.perf_counter() - fitted, 2)
    hp_metrics = {k: metrics[k] for k in HPARAM_METRICS if k in metrics}
    for logger in loggers:
        if tensorboard_writers([logger]):
            logger.log_hyperparams(hparams_to_log(cfg, module.num_parameters), hp_metrics)
        if isinstance(logger, MLFlowLogger):  # the run's results beside its per-epoch curves
            logger.log_metrics({k: float(v) for k, v in metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}, step)
        logger.finalize("success")
    write_json(out_dir / "metrics.json", metrics)
    print_summary(metrics, out_dir)


def print_summary(metrics: dict, out_dir: Path) -> None:
    """The final table a person reads: accuracy, size, time and where the run folder is."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Run finished", show_header=False)
    for key in SUMMARY_KEYS:
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) and key.startswith(("val", "test", "calibration"))
                          else str(value))
    console = Console(stderr=False)
    console.print(table)
    console.print(f"run folder: {out_dir}", soft_wrap=True)
