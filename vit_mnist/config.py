"""Hydra plumbing shared by the entry points: config folder, resolvers, checks that run before any work."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from vit_mnist.data.sources import is_handwritten
from vit_mnist.errors import UserError
from vit_mnist.hardware import fastest_precision

PACKAGE_DIR = Path(__file__).resolve().parent


def find_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The repository folder when the package runs from a checkout (editable install, PYTHONPATH), else None."""
    root = package_dir.parent
    return root if (root / "pyproject.toml").is_file() and (root / "conf" / "train.yaml").is_file() else None


# The checkout's folder, or None for an installed package (wheel, `pip install .`).
PROJECT_ROOT = find_checkout()
# The folder holding the YAML configs: the checkout's conf/ (edits take effect at once), else the copy that the
# wheel ships as vit_mnist/conf (pyproject.toml maps conf/ to the package vit_mnist.conf).
CONFIG_DIR = PROJECT_ROOT / "conf" if PROJECT_ROOT else PACKAGE_DIR / "conf"


def project_root() -> str:
    """The folder holding outputs/ and data/: VIT_MNIST_ROOT, else the checkout, else the working directory.

    An installed package never writes next to itself: without a checkout, runs go to ./outputs.
    """
    return os.environ.get("VIT_MNIST_ROOT") or str(PROJECT_ROOT or Path.cwd())


def _abspath(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def input_norm_for(dataset: str) -> str:
    """The default model.input_norm for a dataset: tophat for handwritten digits, none otherwise.

    A user's digit may come on grey or unevenly lit paper, which the weight-free background normalisation takes
    away; garments fill their image, and it would take them away.
    """
    return "tophat" if is_handwritten(dataset) else "none"


for _name, _fn in (("vit_mnist.root", project_root), ("vit_mnist.abspath", _abspath),
                   ("vit_mnist.input_norm_for", input_norm_for), ("vit_mnist.fastest_precision", fastest_precision)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def validate(cfg: DictConfig) -> None:
    """Check the parts of a composed config that would fail late (model shape, dataset); `UserError` if wrong."""
    from vit_mnist.data.augment import AugmentConfig
    from vit_mnist.data.datamodule import check_loader_options
    from vit_mnist.data.sources import get_spec
    from vit_mnist.models.registry import check_model_config
    from vit_mnist.training.ema import check_ema_options

    spec = get_spec(cfg.data.name)
    m = cfg.model
    check_model_config(m)  # by model.arch: the ViT's shape or the CNN's options
    if m.num_classes != len(spec.classes) or m.image_size != spec.image_size:
        raise UserError(
            f"model.num_classes={m.num_classes} and model.image_size={m.image_size} do not match "
            f"data={spec.name} ({len(spec.classes)} classes, {spec.image_size}x{spec.image_size}); "
            "leave them at their defaults, which follow the data config."
        )
    AugmentConfig(**cfg.data.get("augment", {}))  # its own checks
    d = cfg.data
    check_loader_options(d.get("batch_size", 64), d.get("eval_batch_size", 1000), d.get("val_size", 5000),
                         d.get("num_workers", 0))
    check_training_options(cfg)
    ema = (cfg.get("callbacks") or {}).get("ema")
    if ema:
        check_ema_options(ema.get("decay", 0.999), ema.get("update_starting_at_step"),
                          ema.get("update_starting_at_fraction"))


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


def precheck(config_name: str, argv: list[str], check: Callable[[DictConfig], None] = validate) -> None:
    """Compose the config from the command line and run `check` before Hydra makes a run folder.

    Only for single runs: in a multirun each job checks itself, so one bad job does not stop the sweep.
    Anything that is not a user error (an unusual flag, a composition problem) is left for Hydra to report.
    """
    if any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=argv)
    except Exception:
        return
    finally:
        GlobalHydra.instance().clear()
    try:
        check(cfg)
    except UserError:
        raise
    except Exception:
        return


def is_multirun(argv: list[str] | None = None) -> bool:
    """Whether the command line asks Hydra for a multirun."""
    argv = sys.argv[1:] if argv is None else argv
    return any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv)


def only_hydra_files(out_dir: Path, task_name: str) -> bool:
    """Whether a run folder holds only what Hydra put there: then it is ours to remove after a refused run."""
    return out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {".hydra", f"{task_name}.log"}


def run_job(cfg: DictConfig, work: Callable[[DictConfig], Any], failed: Any = None) -> Any:
    """Run an entry's job: a user's mistake ends a single run with its one-paragraph message (and no folder left
    behind), while in a multirun it is recorded in the job's metrics.json and `failed` returned, so the sweep goes on."""
    import logging
    import shutil

    from hydra.core.hydra_config import HydraConfig

    from vit_mnist.errors import report
    from vit_mnist.reports.classification import write_json

    out_dir = Path(cfg.paths.output_dir)
    removable = only_hydra_files(out_dir, cfg.task_name)
    try:
        return work(cfg)
    except UserError as e:
        if HydraConfig.get().mode.name == "MULTIRUN":  # one bad job must not end the sweep
            logging.getLogger(work.__module__).error("job failed: %s", e)
            write_json(out_dir / "metrics.json", {"status": "failed", "error": " ".join(str(e).split())})
            return failed
        if removable:
            shutil.rmtree(out_dir, ignore_errors=True)
        report(e)


def checkpoint_entry_main(config_name: str, check: Callable[[DictConfig], Any], hydra_main: Callable[[], Any]) -> None:
    """`main()` of an entry that reads a checkpoint (evaluate, robustness): take the checkpoint's dataset unless
    the command line names one, check config and checkpoint before Hydra makes a folder, then run."""
    from vit_mnist.errors import report
    from vit_mnist.evaluate import with_checkpoint_dataset

    argv = sys.argv[1:]
    try:
        if not is_multirun(argv):
            argv = with_checkpoint_dataset(argv)
            precheck(config_name, argv, check)
    except UserError as e:
        report(e)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()
