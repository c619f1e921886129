"""The benchmark on a training run's tested weights (`robustness=true`): a Lightning callback that scores the module
right after the test, on the trainer's device, and gives test/mca, test/ood_auroc and the rest to metrics.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch

from vit_mnist.data.digit_sets import digit_sets_for
from vit_mnist.ood.detector import fit_data_from
from vit_mnist.reports.robustness import write_reports
from vit_mnist.robustness_suite.benchmark import model_entry, run_benchmark
from vit_mnist.robustness_suite.suite import build_suite


def measure_after_training(module: Any, datamodule: Any, augment: dict | None, corruptions: Any, out_dir: Path,
                           loggers: Sequence[Any], step: int, num_images: int | None = None, seed: int = 0,
                           device: torch.device | None = None) -> dict[str, Any]:
    """Score the module on the suite `corruptions` (conf/corruptions/) and the digit sets, write the reports into
    `out_dir`, return the metrics.json entries. `num_images` keeps the first N test images and the first N digits
    of each digit set (null: all). The out-of-domain benchmark uses the module's `ood_detector` when it has one,
    else one fitted on the run's training and validation images; `num_images` caps it too. `device`: where to score
    (default: the module's)."""
    suite = build_suite(corruptions)
    datamodule.setup("test")
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    if num_images:
        images, labels = images[:num_images], labels[:num_images]
    was_training = module.training
    entry = model_entry("this run", str(out_dir), module, datamodule.mean, datamodule.std,
                        device if device is not None else next(module.parameters()).device,
                        len(datamodule.class_names), datamodule.hparams.eval_batch_size, suite, augment,
                        lambda: fit_data_from(datamodule), stored_detector=getattr(module, "ood_detector", None),
                        limit=num_images)
    results, shown = run_benchmark([entry], images, labels, suite, seed, datamodule.hparams.name,
                                   datamodule.data_dir, digit_sets=digit_sets_for(datamodule.hparams.name),
                                   limit=num_images, download=bool(datamodule.hparams.get("download", False)))
    module.train(was_training)
    write_reports(results, suite, shown, out_dir, datamodule.class_names, len(labels), seed, loggers, step)
    r = results[0]
    sets = {f"test/{name}": acc for name, acc in r.digit_sets.items()}
    return {"test/mca": r.mca, "test/mca_unseen": r.unseen_mca, **sets, "test/acc_clean_suite": r.clean,
            "robustness_images": len(labels), **{f"test/corrupt/{k}": v for k, v in r.accuracy.items()},
            "test/ece_corrupted": r.corrupted_ece, **{f"test/ece/{name}": r.ece[name] for name in r.digit_sets},
            **(r.ood.metrics("test/") if r.ood is not None else {})}


class RobustnessBenchmark(L.Callback):
    """After `trainer.test` (global rank zero): the benchmark on the tested weights, on the trainer's device, its
    reports into `out_dir` and TensorBoard; its metrics.json entries in `run_metrics` for the train job to merge.
    Built by the train job from conf/train.yaml's `after_test` when `robustness=true`."""

    def __init__(self, out_dir: str, corruptions: Any, augment: dict | None = None, num_images: int | None = None,
                 seed: int = 0):
        self.out_dir, self.corruptions, self.augment = Path(out_dir), corruptions, augment
        self.num_images, self.seed = num_images, seed
        self.run_metrics: dict[str, Any] = {}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        started = time.perf_counter()
        self.run_metrics = measure_after_training(pl_module, trainer.datamodule, self.augment, self.corruptions,
                                                  self.out_dir, trainer.loggers, trainer.global_step, self.num_images,
                                                  self.seed, trainer.strategy.root_device)
        self.run_metrics["robustness_time_s"] = round(time.perf_counter() - started, 2)
