"""The benchmark on a training run's tested weights (`robustness=true`): test/mca, test/ood_auroc and the rest in
metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from vit_mnist.data.digit_sets import digit_sets_for
from vit_mnist.data.non_digits import load_non_digit_sets
from vit_mnist.reports.robustness import write_reports
from vit_mnist.robustness_suite.ood import detector_for, fit_data_from
from vit_mnist.robustness_suite.scoring import Scorer, run_suite
from vit_mnist.robustness_suite.suite import build_suite, seen_names


def measure_after_training(module: Any, datamodule: Any, augment: dict | None, corruptions: Any, out_dir: Path,
                           loggers: Sequence[Any], step: int, num_images: int | None = None, seed: int = 0,
                           device: torch.device | None = None) -> dict[str, Any]:
    """Score the module on the suite `corruptions` (conf/corruptions/) and the digit sets, write the reports into
    `out_dir`, return the metrics.json entries. `num_images` keeps the first N test images and the first N digits
    of each digit set (null: all). The out-of-domain benchmark uses the module's `ood_detector` when it has one,
    else one fitted on the run's training and validation images; `num_images` caps it too. `device`: where to score,
    the trainer's device (after `trainer.test` Lightning has moved the module back to the CPU); default: the
    module's."""
    suite = build_suite(corruptions)
    datamodule.setup("test")
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    if num_images:
        images, labels = images[:num_images], labels[:num_images]
    device = device if device is not None else next(module.parameters()).device
    scorer = Scorer(module, datamodule.mean, datamodule.std, bool(module.hparams.get("tta", False)), device,
                    len(datamodule.class_names), datamodule.hparams.eval_batch_size)
    extra = {"num_parameters": module.num_parameters, "arch": module.arch}
    was_training = module.training
    scorer.detector, scorer.detector_source, scorer.others = detector_for(
        scorer, getattr(module, "ood_detector", None), None, lambda: fit_data_from(datamodule), num_images)
    non_digits, notes = load_non_digit_sets(datamodule.hparams.name, datamodule.data_dir, num_images, seed,
                                            bool(datamodule.hparams.get("download", False)))
    results, shown = run_suite([("this run", str(out_dir), scorer, seen_names(suite, augment), extra)], images, labels,
                               suite, seed, digit_sets=digit_sets_for(datamodule.hparams.name),
                               digit_set_limit=num_images, non_digit_sets=non_digits, ood_notes=notes)
    module.train(was_training)
    write_reports(results, suite, shown, out_dir, datamodule.class_names, len(labels), seed, loggers, step)
    r = results[0]
    sets = {f"test/{name}": acc for name, acc in r.digit_sets.items()}
    return {"test/mca": r.mca, "test/mca_unseen": r.unseen_mca, **sets, "test/acc_clean_suite": r.clean,
            "robustness_images": len(labels), **{f"test/corrupt/{k}": v for k, v in r.accuracy.items()},
            **(r.ood.metrics("test/") if r.ood is not None else {})}
