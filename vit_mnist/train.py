"""Hydra entry point: train the ViT, test the best checkpoint, write the run's metrics and reports."""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vit_mnist.config import CONFIG_DIR, is_multirun, precheck, validate
from vit_mnist.data.sources import ensure_files, get_spec
from vit_mnist.errors import UserError, find_user_error, report
from vit_mnist.hardware import warn_if_slow_bf16
from vit_mnist.reports.classification import summary_metrics, tensorboard_writers, write_json, write_test_reports
from vit_mnist.training.callbacks import TrainThroughput
from vit_mnist.training.distributed import RankSeed, check_accelerator, hydra_ddp_job, is_sweep_job
from vit_mnist.training.module import ViTClassifier
from vit_mnist.training.transfer import check_init_from, init_from_checkpoint

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a `_target_` in a callbacks or logger group (None or empty gives [])."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


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
    module = ViTClassifier(
        model=cfg.model,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        label_smoothing=cfg.loss.label_smoothing,
        class_names=datamodule.class_names,
        normalize={"mean": datamodule.mean, "std": datamodule.std},
        dataset=cfg.data.name,
        tta=bool(cfg.get("tta", False)),
    )
    if cfg.model.get("init_from"):
        init_from_checkpoint(module.net, cfg.model.init_from, module.hparams.model)
    if cfg.model.get("compile"):
        compile_network(module.net, cfg.model.compile)
    return datamodule, module


def compile_network(net: torch.nn.Module, setting: bool | str) -> None:
    """torch.compile `net` in place (its state_dict keys, so checkpoints, stay the same): `model.compile=true`
    uses inductor; a backend name (e.g. `model.compile=aot_eager`) picks another."""
    backend = "inductor" if setting is True else str(setting)
    if backend not in torch.compiler.list_backends(exclude_tags=()):
        raise UserError(f"model.compile={setting!r} is not a torch.compile backend: use model.compile=true "
                        f"(inductor), false, or one of {torch.compiler.list_backends()}.")
    net.compile(backend=backend)


def build_trainer(trainer_cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    """The Lightning Trainer of `trainer_cfg`; a `UserError` that quotes Lightning when it rejects an option."""
    try:
        return hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    except (InstantiationException, MisconfigurationException) as e:
        cause = find_user_error(e) or e.__cause__ or e
        if isinstance(cause, UserError):
            raise cause from e
        said = str(cause).strip().rstrip(".")
        raise UserError(f"Lightning rejected the trainer config: {said}. Fix the trainer.* override "
                        "(see conf/trainer/ and Lightning's Trainer documentation).") from e


def check_before_run(cfg: DictConfig) -> None:
    """Everything that can be checked before work starts: the config, then the dataset files (downloaded if allowed)."""
    validate(cfg)
    check_accelerator(cfg.trainer)
    warn_if_slow_bf16(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator", "auto"))
    check_init_from(cfg.model)
    ensure_files(get_spec(cfg.data.name), cfg.paths.data_dir, download=cfg.data.download)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test with the best checkpoint, write `metrics.json` and reports; return the metrics."""
    check_before_run(cfg)
    started = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    seed = L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    throughput = TrainThroughput()
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = [c for c in instantiate_group(cfg.get("callbacks")) + [throughput, RankSeed(seed)]
                 if loggers or not isinstance(c, LearningRateMonitor)]  # it refuses to run without a logger
    trainer = build_trainer(cfg.trainer, callbacks, loggers)

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path={ckpt_path} is not a file: give the path of a checkpoint to resume from, "
                        "e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt.")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise SystemExit(130)  # Ctrl+C: Lightning already stopped cleanly

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    val_best = module.val_acc_best.compute().item() if module.val_acc_best.update_count else math.nan
    metrics: dict[str, Any] = {"val/acc_best": val_best}
    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update(summary_metrics(trainer.callback_metrics, module.test_results))  # as evaluate writes them
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
    if trainer.is_global_zero:
        finish_run(cfg, out_dir, module, metrics, trainer.loggers, trainer.global_step, datamodule)
    return metrics


@rank_zero_only
def finish_run(cfg: DictConfig, out_dir: Path, module: ViTClassifier, metrics: dict, loggers: list, step: int,
               datamodule: L.LightningDataModule | None = None) -> None:
    """Rank zero: reports, metrics.json, TensorBoard hparams and a printed summary."""
    if module.test_results:
        write_test_reports(module.test_results, out_dir, module.class_names, loggers, step, map_title=module.map_title)
        if cfg.get("robustness"):  # the corruption benchmark on the tested weights (vit_mnist.robustness)
            from vit_mnist.robustness import training_robustness

            started = time.perf_counter()
            metrics.update(training_robustness(module, datamodule, cfg.data.get("augment"), out_dir, loggers, step,
                                               cfg.get("robustness_images")))
            metrics["robustness_time_s"] = round(time.perf_counter() - started, 2)
    hp_metrics = {k: metrics[k] for k in ("val/acc_best", "test/acc", "test/f1_macro", "test/mca", "test/mca_unseen",
                                          "test/other_writers", "test/pen_photos")
                  if k in metrics}
    for logger in loggers:
        if tensorboard_writers([logger]):
            logger.log_hyperparams(hparams_to_log(cfg, module.num_parameters), hp_metrics)
        logger.finalize("success")
    write_json(out_dir / "metrics.json", metrics)
    print_summary(metrics, out_dir)


def print_summary(metrics: dict, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Run finished", caption=str(out_dir), show_header=False)
    for key in ("val/acc_best", "test/acc", "test/f1_macro", "test/loss", "test/mca", "test/mca_unseen",
                "test/other_writers", "test/pen_photos", "num_parameters", "epochs",
                "train_images_per_s", "wall_time_s", "best_checkpoint"):
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) and key.startswith(("val", "test")) else str(value))
    Console(stderr=False).print(table)


@rank_zero_only
def _remove_unfinished_run(out_dir: Path, log_dir: Path) -> None:
    # A run that failed before training has nothing worth keeping; a folder with checkpoints is kept.
    if out_dir.is_dir() and not (out_dir / "checkpoints").exists():
        shutil.rmtree(out_dir, ignore_errors=True)
        # and the folders Hydra made for it (outputs/<date>/), once empty; never above paths.log_dir
        log_dir = log_dir.resolve()
        for parent in out_dir.resolve().parents:
            if parent != log_dir and log_dir not in parent.parents:
                break
            try:
                parent.rmdir()  # only if empty
            except OSError:
                break


@rank_zero_only
def record_failure(out_dir: Path, error: BaseException) -> None:
    """In a multirun, leave the job's reason for failing where the sweep report finds it."""
    write_json(out_dir / "metrics.json", {"status": "failed", "error": " ".join(str(error).split())})


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The job's val/acc_best for sweepers; None for a failed job (Optuna marks the trial failed, NaN would end it)."""
    out_dir = Path(cfg.paths.output_dir)
    multirun = is_sweep_job()  # also in the other ranks of a sweep's DDP job, which run it as a single run
    rank = f"rank {rank_zero_only.rank}: " if rank_zero_only.rank else ""  # ranks > 0 log into the same train.log
    try:
        try:
            with hydra_ddp_job():
                metrics = train(cfg)
        except Exception as e:
            raise find_user_error(e) or e  # a user's mistake found inside a `_target_` is still one
    except UserError as e:
        if multirun:  # one bad job must not end the sweep
            log.error("%sjob failed: %s", rank, e)
            record_failure(out_dir, e)  # rank 0 only, as all writing
            return None
        _remove_unfinished_run(out_dir, Path(cfg.paths.log_dir))
        report(e)
    except Exception as e:
        if not multirun:
            raise
        log.exception("%sjob failed", rank)
        record_failure(out_dir, e)
        return None
    return metrics["val/acc_best"] if math.isfinite(metrics["val/acc_best"]) else None


def main() -> None:
    """Check the config before Hydra makes a folder, then run."""
    try:
        if not is_multirun():
            precheck("train", sys.argv[1:], check_before_run)
    except UserError as e:
        report(e)
    hydra_main()


if __name__ == "__main__":
    main()
