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

log = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    # A job of a SLURM sweep runs once per task (one per GPU); only the first one summarises.
    rank = next((os.environ[k] for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK") if k in os.environ), "0")
    return rank == "0"


def _summarise(sweep_dir: Path) -> None:
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
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and _is_rank_zero():
            _summarise(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _summarise(Path(str(config.hydra.sweep.dir)))
