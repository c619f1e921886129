"""The one job runner of every entry point: one failure policy, and the value a sweeper optimises.

Every entry's Hydra main is `return run_job(cfg, <job>, <objective>)`. A job runs its checks first, once, then
its work, and returns its metrics. What happens when it fails depends only on the failure and on whether the
job is part of a multirun, never on the entry:

| failure | single run | job of a multirun |
|---|---|---|
| a user's mistake (`UserError`, also when wrapped by Hydra's instantiate) | one paragraph on stderr, exit 2; the run folder is removed unless it holds a checkpoint | logged; the job's metrics.json says `status: failed` and why; the sweep goes on |
| anything else (a bug) | the traceback, exit 1; the run folder is kept with its log | the same, with the traceback in the job's log |
| either, on a DDP rank > 0 that a launcher started (SLURM, submitit) | as above | logged; the rank exits non-zero, which ends the job (`fails_the_job`) |

A failed job of a multirun returns FAILED_OBJECTIVE to the sweeper. A job that ends without a Python exception
(killed from outside: out of memory, a time limit, `os._exit`) is recorded the same way by the launching process
when the submitit launchers run it (vit_mnist.runtime.launcher); the sweep goes on.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from vit_mnist.errors import UserError, find_user_error, report
from vit_mnist.reports.files import write_json
from vit_mnist.runtime.console import quiet_known_noise
from vit_mnist.sweeps.outcome import PrunedTrial

log = logging.getLogger(__name__)

# What a sweeper sees for a failed job: None, which this project's Optuna sweeper (vit_mnist.sweeps) records as a
# FAIL trial with the reason from the job's metrics.json, and the study goes on
# (tests/test_sweep.py::test_optuna_study_goes_on_after_a_failed_trial, tests/test_optuna_storage.py).
FAILED_OBJECTIVE = None
# Set for the rank processes of one job of a multirun (they run it as a single run): a failure there is the
# sweep's to record, by rank 0, and must not end the sweep.
SWEEP_JOB_ENV = "VIT_MNIST_SWEEP_JOB"
# A run folder holding any of these is kept after a user's mistake: work worth keeping (a checkpoint to resume from).
KEEP_IF_PRESENT = ("checkpoints",)

Job = Callable[[DictConfig], dict[str, Any]]


def is_sweep_job() -> bool:
    """Whether this process runs a job of a multirun: rank 0 under Hydra's MULTIRUN mode, or one of its ranks > 0."""
    from hydra.core.hydra_config import HydraConfig

    if os.environ.get(SWEEP_JOB_ENV) == "1":
        return True
    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def run_job(cfg: DictConfig, job: Job, objective: str | Callable[[dict[str, Any]], Any] | None = None) -> Any:
    """Run `job(cfg)` under the failure policy above; return its objective (a metrics key, or a function of the
    metrics) for sweepers, FAILED_OBJECTIVE when the job failed or the objective is not a finite number."""
    quiet_known_noise()
    out_dir = run_folder(cfg)
    sweep = is_sweep_job()
    rank = f"rank {rank_zero_only.rank}: " if rank_zero_only.rank else ""  # ranks > 0 log into the same file
    try:
        try:
            metrics = job(cfg)
        except Exception as e:
            raise find_user_error(e) or e  # a user's mistake found inside a `_target_` is still one
    except UserError as e:
        if sweep:
            log.error("%sjob failed: %s", rank, e)
            record_failure(out_dir, e)
            if fails_the_job():
                raise
            return FAILED_OBJECTIVE
        discard_run_folder(out_dir, cfg)
        report(e)
    except Exception as e:
        if not sweep:
            raise
        log.exception("%sjob failed", rank)
        record_failure(out_dir, e)
        if fails_the_job():
            raise
        return FAILED_OBJECTIVE
    return objective_value(metrics, objective)


def fails_the_job() -> bool:
    """Whether this failing process must fail its job rather than return: a rank > 0 of a job whose processes a
    launcher started (SLURM, submitit, torchrun). Its non-zero exit ends the job's other ranks (srun runs with
    --kill-on-bad-exit, vit_mnist.runtime.launcher) instead of leaving rank 0 blocked in a collective until the
    process group's timeout; the launcher then records the job as failed. Ranks that Lightning started itself
    (SWEEP_JOB_ENV) exit 0: Lightning's process observer would kill the whole sweep's process otherwise."""
    return rank_zero_only.rank != 0 and os.environ.get(SWEEP_JOB_ENV) != "1"


def objective_value(metrics: dict[str, Any] | None, objective: str | Callable[[dict[str, Any]], Any] | None) -> Any:
    """`metrics[objective]` (or `objective(metrics)`) when it is a finite number, else FAILED_OBJECTIVE; for a job
    that an Optuna pruner stopped (`status: pruned`), a PrunedTrial."""
    if objective is None or metrics is None:
        return FAILED_OBJECTIVE if objective is not None else None
    value = objective(metrics) if callable(objective) else metrics.get(objective)
    if metrics.get("status") == "pruned":  # stopped by an Optuna pruner: the sweeper marks the trial PRUNED
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return PrunedTrial(epochs=int(metrics.get("epochs") or 0), value=float(value) if finite else None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return FAILED_OBJECTIVE


def run_folder(cfg: DictConfig) -> Path | None:
    """The job's own folder (`paths.output_dir`), or None for entries that write no run folder (predict, serve)."""
    paths = cfg.get("paths")
    output_dir = paths.get("output_dir") if paths is not None else None
    return Path(output_dir) if output_dir else None


@rank_zero_only
def record_failure(out_dir: Path | None, error: BaseException | str) -> None:
    """In a multirun, leave the job's reason for failing where the sweep summary finds it (also written by the
    submitit launchers for a job killed from outside, vit_mnist.runtime.launcher)."""
    if out_dir is not None:
        write_json(out_dir / "metrics.json", {"status": "failed", "error": " ".join(str(error).split())})


@rank_zero_only
def discard_run_folder(out_dir: Path | None, cfg: DictConfig) -> None:
    """After a user's mistake in a single run: remove the run folder, unless it holds work worth keeping (a
    checkpoint to resume from), and the date folder above it once empty, never `paths.log_dir` or above."""
    if out_dir is None or not out_dir.is_dir() or any((out_dir / name).exists() for name in KEEP_IF_PRESENT):
        return
    if out_dir.resolve() == Path.cwd().resolve():
        return  # entries that run in the working directory (hydra.run.dir=.) never remove it
    shutil.rmtree(out_dir, ignore_errors=True)
    log_dir = Path(cfg.paths.log_dir).resolve() if cfg.paths.get("log_dir") else None
    for parent in out_dir.resolve().parents:
        if log_dir is None or (parent != log_dir and log_dir not in parent.parents):
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
