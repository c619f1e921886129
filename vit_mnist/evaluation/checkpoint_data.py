"""The data a checkpoint was trained on, rebuilt from what it recorded: dataset, validation size and split seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from vit_mnist.data.datamodule import MNISTDataModule
from vit_mnist.errors import UserError
from vit_mnist.training.checkpoints import check_matches_data, trained_dataset

# What the command line decides: where the files are on this machine and how they are read. Everything else
# (dataset, val_size, split_seed) comes from the checkpoint.
RUNTIME_KEYS = ("data_dir", "eval_batch_size", "num_workers", "download")
RECORDED_KEYS = ("val_size", "split_seed")


def checked_dataset(ckpts: list[tuple[str, dict[str, Any]]], data_cfg: Mapping[str, Any]) -> str:
    """The dataset of these checkpoints: each one's own, which `data=<name>` (if given) and the others must match."""
    name = str(data_cfg.get("name") or trained_dataset(ckpts[0][1]))
    for path, ckpt in ckpts:
        check_matches_data(ckpt, name, path)
    return name


def checkpoint_datamodule(ckpt: dict[str, Any], dataset: str, data_cfg: Mapping[str, Any]) -> MNISTDataModule:
    """The data module `ckpt` was trained with (its recorded val_size and split_seed), reading files as `data_cfg`
    says (data_dir, eval_batch_size, num_workers, download)."""
    recorded = ckpt.get("datamodule_hyper_parameters") or {}
    kwargs = {key: recorded[key] for key in RECORDED_KEYS if key in recorded}
    kwargs.update({key: data_cfg[key] for key in RUNTIME_KEYS if data_cfg.get(key) is not None})
    return MNISTDataModule(name=dataset, **kwargs)


def use_val_split(datamodule: MNISTDataModule) -> None:
    """Make the data module's test split its validation split (the checkpoint's own, as recorded)."""
    datamodule.setup("fit")
    if not len(datamodule.val_set):
        raise UserError("split=val, but this checkpoint was trained with data.val_size=0: it has no validation "
                        "split. Evaluate it on the test split (split=test).")
    datamodule.test_set = datamodule.val_set  # setup("test") keeps a test set that is already there


def run_name(path: str | Path) -> str:
    """A checkpoint's run folder name (outputs/<date>/<time>/checkpoints/best.ckpt -> <time>), else its stem."""
    path = Path(path).expanduser().resolve()
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
