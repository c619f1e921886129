"""Jobs on a cluster (SLURM, submitit): launcher sizes that match the trainer, requeue and resume, the job's env."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from vit_mnist.errors import UserError

log = logging.getLogger(__name__)

# Set (to "1") in a job's process by this project's submitit launchers when submitit restarts a job it
# checkpointed before a time limit or a preemption (vit_mnist.runtime.launcher).
REQUEUED_ENV = "VIT_MNIST_REQUEUED"
# A job started by submitit has this variable: "slurm" or "local" (set by submitit itself).
SUBMITIT_EXECUTOR_ENV = "SUBMITIT_EXECUTOR"
# Set by hand for a multi-node run outside SLURM (docs/scaling.md). Inside a SLURM job Lightning takes them
# before the job's own node list and port, so when they come from the shell that submitted the job, all jobs
# of a sweep would meet at one address.
HAND_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")
GPU_ACCELERATORS = ("gpu", "cuda")


def device_count(devices: Any, accelerator: str, where: str) -> int:
    """How many devices (one process each under DDP) a trainer with `devices` and `accelerator` uses on a node;
    0 when that cannot be told here (the launcher then stops with a UserError that says what to set).

    `where` is "local" (this machine: `auto` counts its GPUs) or "slurm" (a compute node seen from the submitting
    machine: `auto` cannot be counted here, so a GPU job must say how many).
    """
    accelerator = str(accelerator).lower()
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:  # "0,2": indices of GPUs, as Lightning reads them
        return len([d for d in text.split(",") if d.strip()])
    if text.lstrip("-").isdigit() and int(text) > 0:
        return int(text)
    if text not in ("auto", "-1"):
        return 0  # not a count, a list or auto: Lightning would refuse it too
    if accelerator == "cpu":
        return 1  # Lightning's auto on the CPU is one process
    if where == "local":
        import torch

        return max(1, torch.cuda.device_count()) if accelerator in (*GPU_ACCELERATORS, "auto") else 1
    return 0 if accelerator in GPU_ACCELERATORS else 1  # a compute node's GPUs cannot be counted from here


def check_launcher_shape(params: dict[str, Any], devices: Any) -> None:
    """`UserError` when the launcher's tasks per node could not be derived from `trainer.devices` (0)."""
    if params.get("tasks_per_node") == 0:
        raise UserError(
            f"The launcher cannot tell how many tasks and GPUs per node a job needs from trainer.devices={devices}: "
            "the submitting machine cannot count the GPUs of a compute node, and Lightning needs one task per "
            "device. Give a count, e.g. trainer.devices=4 (the launcher then asks SLURM for 4 tasks and 4 GPUs "
            "per node), or set hydra.launcher.tasks_per_node and hydra.launcher.gpus_per_node yourself.")


def launcher_tasks(devices: Any, accelerator: str, where: str) -> int:
    """`hydra.launcher.tasks_per_node`: one task per device, so that SLURM (or submitit) starts the DDP processes
    and Lightning reads their ranks, as its SLURM check (`devices` = `--ntasks-per-node`) requires."""
    return device_count(devices, accelerator, where)


def launcher_gpus(devices: Any, accelerator: str, where: str) -> int:
    """`hydra.launcher.gpus_per_node`: the GPUs a job asks for (submitit hides all others from it): one per
    device on a GPU accelerator (on SLURM `auto` asks for them too; locally `auto` takes the GPUs there are),
    none on the CPU."""
    accelerator = str(accelerator).lower()
    if accelerator == "cpu":
        return 0
    if where == "local" and accelerator == "auto":
        import torch

        return min(torch.cuda.device_count(), device_count(devices, accelerator, where))
    if accelerator in GPU_ACCELERATORS or accelerator == "auto":
        return device_count(devices, accelerator, where)
    return 0


def is_submitit_job() -> bool:
    """Whether this process runs a job that submitit started (on SLURM or locally), not the launching process."""
    return bool(os.environ.get(SUBMITIT_EXECUTOR_ENV))


def is_requeued_job() -> bool:
    """Whether this job was started before and requeued (time limit, preemption): SLURM counts the restarts in
    SLURM_RESTART_COUNT; this project's launchers mark a job submitit checkpointed and resubmitted."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return os.environ.get(REQUEUED_ENV) == "1" or (restarts.isdigit() and int(restarts) > 0)


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to fit from: `ckpt_path` when set; for a requeued job without one, its own folder's
    `checkpoints/last.ckpt` (written at every validation), so the job goes on instead of starting again from
    epoch 0 and overwriting it; else None."""
    given = cfg.get("ckpt_path")
    if given or not is_requeued_job():
        return given or None
    last = Path(str(cfg.paths.output_dir)) / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("Requeued job: resuming from %s", last)
        return str(last)
    log.info("Requeued job: no %s yet, starting from the beginning", last)
    return None


def trainer_plugins() -> list[Any]:
    """Lightning plugins for this process: in a SLURM job started by submitit, Lightning's own SLURM auto-requeue
    off (submitit checkpoints and requeues on its signal, USR2; one handler, not two)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if os.environ.get(SUBMITIT_EXECUTOR_ENV) == "slurm" and SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def clear_hand_launch_env() -> list[str]:
    """In a SLURM job: remove MASTER_ADDR, MASTER_PORT and NODE_RANK inherited from the submitting shell (with a
    warning), so Lightning takes the address and port of the job's own nodes; return the names removed."""
    leaked = [k for k in HAND_LAUNCH_ENV if k in os.environ]
    if leaked and "SLURM_JOB_ID" in os.environ:
        log.warning("%s came from the shell that submitted this SLURM job and would override the job's own nodes "
                    "and port: ignored here. Set them only on the command of a run by hand (docs/scaling.md).",
                    ", ".join(f"{k}={os.environ[k]}" for k in leaked))
        for key in leaked:
            del os.environ[key]
        return leaked
    return []


def local_task_env(port: int) -> dict[str, str]:
    """For a job of `hydra/launcher=submitit_local` with several tasks: the variables that tell Lightning the
    task's rank (as torchrun would), so the tasks form one DDP group and Lightning starts no processes itself."""
    ntasks = int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1"))
    if ntasks <= 1:
        return {}
    rank = os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0")
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "0", "WORLD_SIZE": str(ntasks),
            "RANK": rank, "LOCAL_RANK": os.environ.get("SUBMITIT_LOCAL_LOCALID", rank)}
