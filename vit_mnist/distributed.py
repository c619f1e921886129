"""DDP under Hydra: ranks > 0 re-run exactly the current job in its folder, and evaluation sees each image once."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, DistributedSampler

# What Lightning's process launcher sets in this process's environment when it starts ranks > 0.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")


@contextmanager
def hydra_ddp_job() -> Iterator[None]:
    """Around one Hydra job: DDP processes that Lightning starts re-run this job, in this job's folder.

    Lightning's launcher (strategy=ddp without SLURM or torchrun) starts ranks > 0 by running the current
    command line again with `hydra.run.dir=<HydraConfig run.dir>`. In a multirun that command line is the
    whole sweep and run.dir is not the job's folder, so every rank would start a sweep of its own. For the
    time of the job the command line becomes a single run of this job's overrides, and run.dir the job's
    folder (for a single run that is the folder Hydra made, not `${now:}` evaluated again a second later).
    Afterwards the process group and the launch's environment are cleared, so the next job of a sweep
    starts processes of its own instead of waiting for the previous job's.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    if "LOCAL_RANK" in os.environ or not HydraConfig.initialized():
        yield  # started by a launcher (torchrun, SLURM, Lightning itself): nothing to relaunch
        return
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_threads = list(sys.argv), torch.get_num_threads()
    saved_env = {k: os.environ.get(k) for k in LAUNCH_ENV}
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra_cfg.run):  # this job's copy of the Hydra config; the sweep's is untouched
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(saved_threads)  # Lightning lowers it to cores / processes


def eval_sampler(dataset: Dataset, trainer: object | None) -> DistributedSampler | None:
    """The sampler of a validation/test loader: with several processes, shards that hold every item exactly once.

    torch's DistributedSampler, which Lightning adds to evaluation loaders too, repeats items until every rank
    has as many (2 ranks, 5001 images: one image counted twice). Lightning keeps a loader's own
    DistributedSampler, and its UnrepeatedDistributedSampler (what it uses for predict) never repeats; torchmetrics
    then sums exact counts across ranks. Ranks may run one batch fewer than others, which is safe because the
    model has no buffers for DDP to sync and evaluation steps log only torchmetrics objects at epoch end.
    """
    world_size = int(getattr(trainer, "world_size", 1) or 1)
    if world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=int(getattr(trainer, "global_rank", 0)),
                                        shuffle=False)
