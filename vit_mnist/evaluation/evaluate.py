"""Evaluate one checkpoint on the test (or its own validation) split: reports and metrics.json in a run folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_mnist.errors import UserError
from vit_mnist.evaluation.checkpoint_data import (
    checked_dataset,
    checkpoint_datamodule,
    use_val_split,
)
from vit_mnist.reports.classification import summary_metrics, write_test_reports
from vit_mnist.reports.files import write_json
from vit_mnist.runtime.build import build_trainer, instantiate_group
from vit_mnist.training.checkpoints import module_from_checkpoint, read_checkpoint
from vit_mnist.training.distributed import check_accelerator
from vit_mnist.training.module import PRECISION_KEY

SPLITS = ("test", "val")
HOW = ("Give the path of a checkpoint written by `python -m vit_mnist.train`, "
       "e.g. ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt.")


def _one_device(devices: Any) -> bool:
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices) == 1
    return str(devices) == "1"


def check_config(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """Every check of an evaluate config and its checkpoint, before any work; the checkpoint's contents (read
    once) and the dataset to evaluate on."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError(f"No checkpoint to evaluate: add ckpt_path=... to the command. {HOW}")
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split!r} is not a split to evaluate on: use split=test (the official test set) "
                        "or split=val (the checkpoint's validation split).")
    if not _one_device(cfg.trainer.get("devices", 1)) or int(cfg.trainer.get("num_nodes", 1)) != 1:
        raise UserError(
            f"trainer.devices={cfg.trainer.get('devices')} and trainer.num_nodes={cfg.trainer.get('num_nodes')}: "
            "evaluate runs on one device, so that each image is counted exactly once. Use trainer.devices=1 "
            "trainer.num_nodes=1 (e.g. trainer=default, trainer=cpu or trainer=gpu)."
        )
    check_accelerator(cfg.trainer)
    ckpt = read_checkpoint(cfg.ckpt_path)
    return ckpt, checked_dataset([(str(cfg.ckpt_path), ckpt)], cfg.data)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint `cfg.ckpt_path` on `cfg.split`; write the reports and metrics.json; return the metrics."""
    started = time.perf_counter()
    ckpt, dataset = check_config(cfg)
    out_dir, split = Path(cfg.paths.output_dir), cfg.split
    datamodule = checkpoint_datamodule(ckpt, dataset, cfg.data)
    datamodule.prepare_data()  # missing data files fail here, before anything is written
    if split == "val":
        use_val_split(datamodule)
    module = module_from_checkpoint(ckpt, cfg.ckpt_path)  # on the CPU; the trainer moves it to its device
    module.eval_prefix = split
    if cfg.get("tta") is not None:  # else as the checkpoint's run was configured
        module.hparams.tta = bool(cfg.tta)
    loggers = instantiate_group(cfg.get("logger"))
    trainer = build_trainer(cfg.trainer, [], loggers, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)

    results = module.test_results
    metrics = summary_metrics(trainer.callback_metrics, results, split)
    metrics.update(
        {
            "split": split,
            "tta": bool(module.hparams.get("tta", False)),
            "dataset": dataset,
            "arch": module.arch,  # vit or cnn
            "num_samples": len(results["targets"]),
            "ckpt_path": str(Path(cfg.ckpt_path).expanduser().resolve()),
            "checkpoint_epoch": ckpt.get("epoch"),
            "checkpoint_global_step": ckpt.get("global_step"),
            "device": str(trainer.strategy.root_device),
            "precision": str(trainer.precision),
            "run_precision": ckpt.get(PRECISION_KEY),  # None for a checkpoint written before it was recorded
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
    )
    # Logged at the checkpoint's training step, so TensorBoard lines the evaluation up with the training curves.
    write_test_reports(results, out_dir, module.class_names, trainer.loggers, int(ckpt.get("global_step") or 0), split,
                       map_title=module.map_title)
    for logger in trainer.loggers:
        logger.finalize("success")
    write_json(out_dir / "metrics.json", metrics)
    print(f"{split}/acc {metrics[f'{split}/acc']:.4f}  {split}/ece {metrics[f'{split}/ece']:.4f} (before "
          f"calibration {metrics[f'{split}/ece_raw']:.4f}, temperature {module.temperature:.4g})  reports in {out_dir}")
    if metrics["run_precision"] not in (None, metrics["precision"]):
        print(f"note: this evaluation computed in {metrics['precision']}, the run tested itself in "
              f"{metrics['run_precision']}: the figures may differ from the run's in the last digits; "
              f"trainer.precision={metrics['run_precision']} reproduces the run's exactly (predict and the exports "
              f"compute in fp32).")
    return metrics
