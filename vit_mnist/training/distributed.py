"""DDP under Hydra: other ranks re-run the job in its folder, draw randomness of their own, evaluate each image once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from lightning.pytorch import Callback
from omegaconf import DictConfig

from vit_mnist.errors import UserError
from vit_mnist.runtime.runner import SWEEP_JOB_ENV

log = logging.getLogger(__name__)

# What Lightning's process launcher sets in this process's environment when it starts ranks > 0.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS", SWEEP_JOB_ENV)
# Hydra's flags that choose the config (its search path and primary config): every rank must compose the same one.
CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# How long rank 0 waits, after a job, for the job's other processes to exit before stopping them.
RANK_EXIT_TIMEOUT_S = 60.0


def config_flags(argv: list[str]) -> list[str]:
    """The config-choosing flags of a Hydra command line (`--config-dir X`, `-cn=name`, ...), values included."""
    kept: list[str] = []
    for i, arg in enumerate(argv):
        flag = arg.split("=", 1)[0]
        if flag not in CONFIG_FLAGS:
            continue
        kept.append(arg)
        if "=" not in arg and i + 1 < len(argv):
            kept.append(argv[i + 1])
    return kept


def relaunch_argv(argv: list[str], task_overrides: list[str], hydra_overrides: list[str]) -> list[str]:
    """The command line of this job's other ranks: its config flags and search path, its overrides, a single run."""
    searchpath = [o for o in hydra_overrides if o.lstrip("+~").startswith("hydra.searchpath")]
    return [argv[0], *config_flags(argv[1:]), *searchpath, *task_overrides, "hydra.mode=RUN"]


@contextmanager
def hydra_ddp_job() -> Iterator[None]:
    """Around one Hydra job: DDP processes that Lightning starts re-run this job, in this job's folder.

    Lightning's launcher (strategy=ddp without SLURM or torchrun) starts ranks > 0 by running the current
    command line again with `hydra.run.dir=<HydraConfig run.dir>`. In a multirun that command line is the
    whole sweep and run.dir is not the job's folder, so every rank would start a sweep of its own. For the
    time of the job the command line becomes a single run of this job's overrides, and run.dir the job's
    folder (for a single run that is the folder Hydra made, not `${now:}` evaluated again a second later).
    The config flags (`--config-dir`, `-cn`, ...) and `hydra.searchpath` are kept, so every rank composes the
    config rank 0 did.
    In a multirun the other ranks are told (SWEEP_JOB_ENV) that a failure is rank 0's to record: they exit 0
    instead of non-zero, which would make Lightning's process observer kill this process mid-sweep.
    Afterwards the process group and the launch's environment are cleared, and the job's other processes are
    waited for (stopped if they hang), so the next job of a sweep starts processes of its own.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    if started_externally() or not HydraConfig.initialized() or HydraConfig.get().mode is None:
        yield  # started by a launcher (torchrun, SLURM, submitit, Lightning itself), or not by Hydra's main
        return
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_threads = list(sys.argv), torch.get_num_threads()
    saved_env = {k: os.environ.get(k) for k in LAUNCH_ENV}
    observers_before = _process_observers()
    sys.argv = relaunch_argv(saved_argv, list(hydra_cfg.overrides.task), list(hydra_cfg.overrides.hydra))
    if hydra_cfg.mode.name == "MULTIRUN":
        os.environ[SWEEP_JOB_ENV] = "1"  # inherited by the processes Lightning starts
    with read_write(hydra_cfg.run):  # this job's copy of the Hydra config; the sweep's is untouched
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # a rank blocked in a collective with this one gets an error
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(saved_threads)  # Lightning lowers it to cores / processes
        end_rank_processes(_process_observers() - observers_before)


def started_externally() -> bool:
    """Whether this process is one of a job's processes that a launcher started and ranked: Lightning's own
    relaunch, torchrun, submitit's local tasks (all set LOCAL_RANK) or SLURM (SLURM_LOCALID, which Lightning
    reads when it detects a SLURM job), so Lightning starts no processes and there is nothing to relaunch."""
    from lightning.fabric.plugins.environments import (
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    return "LOCAL_RANK" in os.environ or SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


def _process_observers() -> set[threading.Thread]:
    """Lightning's watcher threads over the rank processes its launcher started (one per launch)."""
    from lightning.fabric.strategies.launchers.subprocess_script import (
        _ChildProcessObserver,
    )

    return {t for t in threading.enumerate() if isinstance(t, _ChildProcessObserver)}


def end_rank_processes(observers: set[threading.Thread], timeout: float = RANK_EXIT_TIMEOUT_S) -> None:
    """Wait for the rank processes of the job that just ended; stop those still running after `timeout` s.

    They are first taken off the watch of Lightning's observer, which SIGKILLs this process as soon as one of
    them exits non-zero: the job's result is what rank 0 recorded, and a sweep goes on to its next job.
    """
    procs: list[subprocess.Popen] = []
    for observer in observers:
        watched = getattr(observer, "_child_processes", [])
        procs += watched
        watched.clear()  # the observer then sees nothing left to watch and ends
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            code = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("rank process %d still running %.0f s after the job ended: stopping it", proc.pid, timeout)
            proc.kill()
            code = proc.wait()
        if code:
            log.warning("rank process %d exited with code %d", proc.pid, code)


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """`UserError` when `trainer.accelerator` asks for a GPU that this machine's torch cannot use, saying why."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return
    if accelerator == "gpu" and torch.backends.mps.is_available():
        return  # Apple GPU: Lightning's "gpu" means it there
    fallback = ("To run on this machine's CPU instead, use trainer.accelerator=cpu, or trainer.accelerator=auto "
                "(a GPU when there is one, else the CPU).")
    if torch.version.cuda is None:
        raise UserError(
            f"trainer.accelerator={accelerator}, but the installed torch {torch.__version__} is a CPU-only build, "
            "which cannot use a GPU. On a machine with an NVIDIA GPU, install the CUDA build of the pinned torch: "
            "`.venv/bin/pip uninstall -y torch`, then `make install` (PyPI's Linux wheels are CUDA builds; for "
            f"another CUDA version see https://pytorch.org/get-started/locally/). {fallback}"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise UserError(
        f"trainer.accelerator={accelerator}, but torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees "
        "no usable GPU: check that `nvidia-smi` lists one and that the driver supports this CUDA version"
        + (f", and CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "") + f". {fallback}"
    )


def rank_seed(seed: int, rank: int) -> int:
    """The seed of global rank `rank`'s random stream in a run seeded `seed`.

    The two are mixed by numpy's SeedSequence: `seed + rank` would give rank 1 of seed 42 the stream of rank 0
    of seed 43, so two runs of a seed sweep would share augmentations.
    """
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)[0])


class RankSeed(Callback):
    """With several processes, reseed torch on each rank with `rank_seed(seed, global_rank)` before fitting.

    `seed_everything` seeds every rank alike, so the on-device augmentation, dropout and drop path would draw
    the same numbers for image i of every rank's batch. The model is built (and initialised) before this, alike
    on every rank, and DDP starts from rank 0's weights anyway. One process keeps the stream of its seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # runs on every rank once the process group is up, before the first batch
        if stage == "fit" and trainer.world_size > 1:
            torch.manual_seed(rank_seed(self.seed, trainer.global_rank))  # CPU and every CUDA device
