"""Hydra callbacks: keep a multirun's sweep summary up to date (`hydra.callbacks` in conf/hydra/default.yaml)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from vit_mnist.reports.sweep import SUMMARY_STEM, write_sweep_report
from vit_mnist.runtime.cluster import is_submitit_job

log = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    # A job of a SLURM sweep runs once per task (one per GPU); only the first one summarises.
    rank = next((os.environ[k] for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK") if k in os.environ), "0")
    return rank == "0"


def summarise(sweep_dir: Path) -> None:
    """Write the sweep summary of `sweep_dir`; log, never raise, when it cannot be written."""
    try:
        rows = write_sweep_report(sweep_dir)
    except Exception:  # the jobs' results are on disk: a failed summary must not turn the sweep into an error
        log.exception("Could not write the sweep summary; run `python -m vit_mnist.sweep_report %s`", sweep_dir)
        return
    ok = sum(r.status == "ok" for r in rows)
    log.info("Sweep summary (%d of %d jobs ok): %s", ok, len(rows), sweep_dir / f"{SUMMARY_STEM}.md")


class SweepReport(Callback):
    """Write `vit_mnist.sweep_report`'s summary into the sweep folder after every job and when the multirun ends.

    After every job, so that a long sweep can be followed, and a sweep that stops early (Ctrl+C, an Optuna study
    whose trials all failed) still leaves a summary; at the end, so the summary has every job.
    Always by the launching process: a job that submitit runs (on SLURM, on a compute node, at the same time as
    the others) leaves it to this project's submitit launcher, which writes it as each job's result comes in
    (vit_mnist.runtime.launcher).
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and _is_rank_zero() and not is_submitit_job():
            summarise(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarise(Path(str(config.hydra.sweep.dir)))
