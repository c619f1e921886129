"""Hydra entry point: evaluate a checkpoint on the test (or val) split and write its reports into a run folder."""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_mnist.checkpoints import read_checkpoint
from vit_mnist.config import CONFIG_DIR, checkpoint_entry_main, run_job
from vit_mnist.data.sources import get_spec
from vit_mnist.errors import UserError
from vit_mnist.reports.classification import summary_metrics, write_json, write_test_reports
from vit_mnist.train import instantiate_group
from vit_mnist.training.distributed import check_accelerator
from vit_mnist.training.module import ViTClassifier

log = logging.getLogger(__name__)

SPLITS = ("test", "val")
HOW = ("Give the path of a checkpoint written by `python -m vit_mnist.train`, "
       "e.g. ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt.")


def check_matches_data(ckpt: dict[str, Any], data_name: str, path: str) -> None:
    """`UserError` unless the checkpoint was trained on dataset `data_name` (same classes and image size)."""
    spec = get_spec(data_name)
    hparams = ckpt["hyper_parameters"]
    trained_on = hparams.get("dataset")
    if trained_on and trained_on != spec.name:
        raise UserError(
            f"ckpt_path={path} was trained on {trained_on}, but data={spec.name} was chosen: a model can only be "
            f"evaluated on the dataset it learned, whose classes its outputs stand for. Leave out `data=` to "
            f"evaluate on the checkpoint's own dataset (data={trained_on})."
        )
    model = hparams["model"]
    shape = (model.get("num_classes"), model.get("image_size"), model.get("in_channels", 1))
    names = hparams.get("class_names")
    if shape != (len(spec.classes), spec.image_size, 1) or (names and list(names) != list(spec.classes)):
        raise UserError(
            f"ckpt_path={path} holds a model for {shape[0]} classes {names or ''} of {shape[1]}x{shape[1]} images "
            f"with {shape[2]} channel(s), but data={spec.name} has the {len(spec.classes)} classes "
            f"{list(spec.classes)} of {spec.image_size}x{spec.image_size} images with 1 channel. Evaluate the "
            f"checkpoint on the dataset it was trained on."
        )


def _one_device(devices: Any) -> bool:
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices) == 1
    return str(devices) == "1"


def check_config(cfg: DictConfig) -> dict[str, Any]:
    """Check an evaluate config and its checkpoint before any work; return the checkpoint's contents."""
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
    check_matches_data(ckpt, cfg.data.name, cfg.ckpt_path)
    return ckpt


def with_checkpoint_dataset(argv: list[str]) -> list[str]:
    """The command line, plus `data=<the checkpoint's dataset>` when it names no dataset itself."""
    if any(re.match(r"[+~]*data=", arg) for arg in argv):
        return argv
    path = next((arg.split("=", 1)[1] for arg in reversed(argv) if re.match(r"\+?ckpt_path=", arg)), None)
    try:
        dataset = read_checkpoint(path)["hyper_parameters"].get("dataset") if path else None
    except UserError:
        return argv  # the check that follows reports it
    return [*argv, f"data={dataset}"] if dataset else argv


def use_val_split(datamodule: L.LightningDataModule, ckpt: dict[str, Any]) -> None:
    """Make the datamodule's test split the checkpoint's validation split (its val_size and split_seed)."""
    saved = ckpt.get("datamodule_hyper_parameters") or {}
    for key in ("val_size", "split_seed"):
        if key in saved and saved[key] != datamodule.hparams[key]:
            log.info("split=val: data.%s=%s from the checkpoint (config has %s)", key, saved[key], datamodule.hparams[key])
            datamodule.hparams[key] = saved[key]
    datamodule.setup("fit")
    if not len(datamodule.val_set):
        raise UserError("split=val, but this checkpoint was trained with data.val_size=0: it has no validation "
                        "split. Evaluate it on the test split (split=test).")
    datamodule.test_set = datamodule.val_set  # setup("test") keeps a test set that is already there


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint `cfg.ckpt_path` on `cfg.split`; write the reports and metrics.json; return the metrics."""
    started = time.perf_counter()
    ckpt = check_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    split = cfg.split
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()  # missing data files fail here, before anything is written
    if split == "val":
        use_val_split(datamodule, ckpt)
    # A GPU checkpoint loads onto the CPU; the trainer then moves it to whatever device it runs on.
    module = ViTClassifier.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=True)
    module.eval_prefix = split
    if cfg.get("tta") is not None:  # else as the checkpoint's run was configured
        module.hparams.tta = bool(cfg.tta)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=[],
                                                 enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)

    results = module.test_results
    metrics = summary_metrics(trainer.callback_metrics, results, split)
    metrics.update(
        {
            "split": split,
            "tta": bool(module.hparams.get("tta", False)),
            "dataset": cfg.data.name,
            "arch": module.arch,  # vit or cnn
            "num_samples": len(results["targets"]),
            "ckpt_path": str(Path(cfg.ckpt_path).expanduser().resolve()),
            "checkpoint_epoch": ckpt.get("epoch"),
            "checkpoint_global_step": ckpt.get("global_step"),
            "device": str(trainer.strategy.root_device),
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
    )
    # Logged at the checkpoint's training step, so TensorBoard lines the evaluation up with the training curves.
    write_test_reports(results, out_dir, module.class_names, trainer.loggers, int(ckpt.get("global_step") or 0), split,
                       map_title=module.map_title)
    for logger in trainer.loggers:
        logger.finalize("success")
    write_json(out_dir / "metrics.json", metrics)
    print(f"{split}/acc {metrics[f'{split}/acc']:.4f}  {split}/ece {metrics[f'{split}/ece']:.4f}  "
          f"reports in {out_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def hydra_main(cfg: DictConfig) -> float | None:
    """The split's accuracy, for sweepers; NaN for a failed job."""
    metrics = run_job(cfg, evaluate, failed=None)
    return math.nan if metrics is None else metrics[f"{cfg.split}/acc"]


def main() -> None:
    """Check the checkpoint and config before Hydra makes a folder, then run."""
    checkpoint_entry_main("evaluate", check_config, hydra_main)


if __name__ == "__main__":
    main()
