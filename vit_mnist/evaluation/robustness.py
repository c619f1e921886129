"""The robustness benchmark for one or more checkpoints: clean, each corruption, other writers and pen photos, and
the out-of-domain benchmark on the non-digit sets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from vit_mnist.data.digit_sets import DIGIT_SETS, digit_sets_for
from vit_mnist.errors import UserError
from vit_mnist.evaluation.checkpoint_data import (
    checked_dataset,
    checkpoint_datamodule,
    run_name,
)
from vit_mnist.ood.detector import CHECKPOINT_KEY, check_score, fit_data_from
from vit_mnist.reports.files import write_json
from vit_mnist.reports.robustness import print_results, robustness_json, write_reports
from vit_mnist.robustness_suite.benchmark import model_entry, run_benchmark
from vit_mnist.robustness_suite.suite import CorruptionSpec, build_suite
from vit_mnist.runtime.build import instantiate_group
from vit_mnist.runtime.hardware import resolve_device
from vit_mnist.training.checkpoints import module_from_checkpoint, read_checkpoint


def checkpoint_list(cfg: DictConfig) -> list[tuple[str, str]]:
    """(setting, path) of each checkpoint: `ckpt_path` first, then `ckpt_paths[i]`."""
    paths = [(f"ckpt_paths[{i}]", str(p)) for i, p in enumerate(cfg.get("ckpt_paths") or [])]
    if cfg.get("ckpt_path"):
        paths.insert(0, ("ckpt_path", str(cfg.ckpt_path)))
    return paths


def model_names(cfg: DictConfig, paths: Sequence[str]) -> list[str]:
    """Names for the table: `names=[...]`, else each checkpoint's run folder (made unique)."""
    given = [str(n) for n in (cfg.get("names") or [])]
    if given and len(given) != len(paths):
        raise UserError(f"names={given} has {len(given)} names for {len(paths)} checkpoints: give one name per "
                        "checkpoint, in the same order, or leave `names` out.")
    if given:
        return given
    names: list[str] = []
    for p in paths:
        base = name = run_name(p)
        i = 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_config(cfg: DictConfig) -> tuple[list[CorruptionSpec], list[dict[str, Any]], str]:
    """Every check of the benchmark config and its checkpoints, before any work: the suite, the checkpoints'
    contents (each read once) and the dataset."""
    paths = checkpoint_list(cfg)
    if not paths:
        raise UserError("No checkpoint to test: add ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt, or "
                        "several as 'ckpt_paths=[a.ckpt,b.ckpt]'.")
    suite = build_suite(cfg.corruptions, cfg.get("severity"), list(cfg.get("only") or []))
    num_images = cfg.get("num_images")
    if num_images is not None and not _positive_int(num_images):
        raise UserError(f"num_images={num_images!r} must be a positive whole number (the first N test images), "
                        "or null for all of them.")
    for key in ("batch_size", "examples", "pen_photos_images"):
        if not _positive_int(cfg.get(key)):
            raise UserError(f"{key}={cfg.get(key)!r} must be a positive whole number.")
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise UserError(f"seed={cfg.get('seed')!r} must be a whole number: it fixes the corrupted images.")
    check_score(cfg.get("ood_score"))
    model_names(cfg, [p for _, p in paths])
    ckpts = [read_checkpoint(path, key) for key, path in paths]
    dataset = checked_dataset([(path, ckpt) for (_, path), ckpt in zip(paths, ckpts)], cfg.data)
    resolve_device(cfg.get("device", "auto"))
    return suite, ckpts, dataset


def robustness(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark for every checkpoint of `cfg`; write the reports; return the JSON summary."""
    started = time.perf_counter()
    suite, ckpts, dataset = check_config(cfg)
    paths = [p for _, p in checkpoint_list(cfg)]
    names = model_names(cfg, paths)
    out_dir = Path(cfg.paths.output_dir)
    device = resolve_device(cfg.get("device", "auto"))
    datamodule = checkpoint_datamodule(ckpts[0], dataset, cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    num_images = cfg.get("num_images")
    if num_images:
        images, labels = images[:num_images], labels[:num_images]
    entries = []
    for name, path, ckpt in zip(names, paths, ckpts):
        # the checkpoint's detector, else one fitted on the data it recorded
        entries.append(model_entry(
            name, str(Path(path).expanduser().resolve()), module_from_checkpoint(ckpt, path), datamodule.mean,
            datamodule.std, device, len(datamodule.class_names), int(cfg.batch_size), suite,
            (ckpt.get("datamodule_hyper_parameters") or {}).get("augment"),
            lambda ckpt=ckpt: fit_data_from(checkpoint_datamodule(ckpt, dataset, cfg.data)),
            tta=None if cfg.get("tta") is None else bool(cfg.tta), ood=bool(cfg.get("ood", True)),
            stored_detector=ckpt.get(CHECKPOINT_KEY), ood_score=cfg.get("ood_score"), limit=num_images))
    sets = [name for name in digit_sets_for(dataset) if bool(cfg.get(name, True))]
    results, shown = run_benchmark(entries, images, labels, suite, int(cfg.seed), dataset, cfg.data.data_dir,
                                   digit_sets=sets, limit=num_images, examples=int(cfg.examples),
                                   ood=bool(cfg.get("ood", True)), download=bool(cfg.data.get("download", False)),
                                   pen_photos=int(cfg.pen_photos_images))
    loggers = instantiate_group(cfg.get("logger"))
    write_reports(results, suite, shown, out_dir, datamodule.class_names, len(labels), int(cfg.seed), loggers)
    for logger in loggers:
        logger.finalize("success")
    summary = robustness_json(results, suite, len(labels), int(cfg.seed))
    summary["wall_time_s"] = round(time.perf_counter() - started, 2)
    summary["device"] = str(device)
    write_json(out_dir / "metrics.json", {"status": "ok", "models": [
        {"name": r.name, "clean_acc": r.clean, "mca": r.mca, "unseen_mca": r.unseen_mca,
         **{f"{name}_acc": r.digit_sets.get(name) for name in DIGIT_SETS},
         **({"ood_auroc": r.ood.mean_auroc, "ood_score": r.ood.score} if r.ood else {})} for r in results],
        "wall_time_s": summary["wall_time_s"]})
    print_results(results)
    print(f"reports in {out_dir}")
    return summary
