"""Submitit launchers (SLURM, local) whose sweep survives its jobs: a killed job is recorded as failed, not fatal.

The plugin's launchers (hydra-submitit-launcher) wait for every job with `job.results()`, which raises when a
job ended without a result: killed from outside (out of memory, time limit, preemption, `os._exit`) or a DDP task
0 that died. That ended the whole sweep: the batch's other results were lost, an Optuna study kept its trials
RUNNING, `on_multirun_end` never ran. Here each job's result is collected on its own, and a job without one gets
the project's one failure policy (vit_mnist.runtime.runner): `metrics.json` says `failed` and why, the sweeper
gets FAILED_OBJECTIVE, the sweep goes on. The sweep summary is written here, by the launching process, after each
job (the jobs themselves never write it: on SLURM they would all write it at once, from their compute nodes).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

from vit_mnist.errors import UserError, report
from vit_mnist.runtime.cluster import (
    REQUEUED_ENV,
    check_launcher_shape,
    clear_hand_launch_env,
    local_task_env,
)

log = logging.getLogger(__name__)

# Options of srun for every SLURM job: a task that exits non-zero (a DDP rank that failed) ends the job's other
# tasks at once, instead of leaving rank 0 blocked in a collective until the process group's timeout.
SRUN_ARGS = ["--kill-on-bad-exit=1"]
# The port at which the tasks of a local job meet, chosen free by the launching process.
LOCAL_PORT_ENV = "VIT_MNIST_LOCAL_PORT"


def free_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of a local job's tasks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def error_line(text: str, limit: int = 300) -> str:
    """The last line of the traceback in submitit's report of a task that raised, at most `limit` characters."""
    parts = text.split("-" * 22)  # submitit frames the trace with a line of dashes
    lines = [line.strip() for line in (parts[1] if len(parts) > 2 else text).splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[:limit] + "..."


def no_result_reason(job: Any, error: BaseException) -> str:
    """One line on why a submitit job gave no result, and where its log is."""
    if "failed during processing" in str(error):  # an exception escaped the job (one run_job does not record)
        cause = f"an error escaped the job: {error_line(str(error))}"
    else:
        cause = ("it ended without a result: killed from outside (out of memory, the time limit, a preemption) "
                 "or its DDP task 0 died")
    state = getattr(job, "state", "unknown")
    return f"submitit job {job.job_id} (state {state}): {cause}. Its log: {job.paths.stderr}."


class SurvivingLauncher(submitit_launcher.BaseSubmititLauncher):
    """The plugin's launcher with each job's result collected on its own (see the module's docstring). Hydra
    loads launchers only from `hydra_plugins`: the classes it runs, LocalLauncher and SlurmLauncher, are in
    hydra_plugins/vit_mnist_launcher."""

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[type, Singleton], env: dict[str, str] | None = None) -> JobReturn:
        """Run one job in submitit's process: set its environment, then the plugin's run of the Hydra job."""
        from lightning.pytorch.utilities import rank_zero_only

        os.environ.update(env or {})
        if self._EXECUTOR == "local":
            os.environ.update(local_task_env(int(os.environ.get(LOCAL_PORT_ENV, "29500"))))
        if self._EXECUTOR == "slurm":
            clear_hand_launch_env()
        for key in ("RANK", "SLURM_PROCID"):  # Lightning read the rank at import, before these were known
            if key in os.environ:
                rank_zero_only.rank = int(os.environ[key])
                break
        ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        if ret.status == JobStatus.FAILED and rank_zero_only.rank != 0:
            # a rank > 0 that failed (vit_mnist.runtime.runner.fails_the_job): exit non-zero, which ends the job
            raise ret._return_value
        return ret

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit before a time limit or a preemption: resubmit this job, marked as requeued, so
        that it resumes from its folder's checkpoints/last.ckpt (vit_mnist.runtime.cluster.resume_checkpoint)."""
        import submitit

        *job_args, env = args  # __call__'s arguments, as `launch` submitted them
        return submitit.helpers.DelayedSubmission(self, *job_args, {**(env or {}), REQUEUED_ENV: "1"}, **kwargs)

    def _executor(self) -> Any:
        """The submitit executor of this launcher's settings (hydra.launcher.*)."""
        import submitit

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:  # an argument of the executor, not a job parameter
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the others take the executor's prefix
        job_params = {k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()}
        if self._EXECUTOR == "slurm":
            job_params["slurm_srun_args"] = SRUN_ARGS
        executor.update_parameters(**job_params)
        return executor

    def job_folder(self, overrides: Sequence[str], job_num: int) -> tuple[Path, list[str]]:
        """The folder Hydra gives job `job_num` of this sweep, and the job's task overrides."""
        assert self.hydra_context is not None and self.config is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = job_num
        folder = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        return folder, [str(o) for o in sweep_config.hydra.overrides.task]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the batch as a job array; collect each job's result on its own, a job without one as failed."""
        assert self.config is not None and len(job_overrides) > 0
        try:
            check_launcher_shape(self.params, OmegaConf.select(self.config, "trainer.devices"))
            try:
                executor = self._executor()
            except RuntimeError as e:  # submitit's SLURM executor: no srun on this machine
                if "srun" not in str(e):
                    raise
                raise UserError("hydra/launcher=slurm submits jobs with SLURM's sbatch and srun, which this machine "
                                "does not have: run the sweep on a machine of the cluster (its login node), or "
                                "try it here first with hydra/launcher=submitit_local.") from e
        except UserError as e:
            report(e)  # one paragraph and exit 2, before anything is submitted
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        nums = [initial_job_idx + i for i in range(len(job_overrides))]
        for num, overrides in zip(nums, job_overrides):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        # a job's tasks meet at one port (locally; on SLURM Lightning derives it from the job id)
        envs = [{LOCAL_PORT_ENV: str(free_port())} if self._EXECUTOR == "local" else {} for _ in nums]
        jobs = executor.map_array(self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(nums), nums,
                                  [f"job_id_for_{n}" for n in nums], [Singleton.get_state()] * len(nums), envs)
        from vit_mnist.runtime.sweep_callback import (
            summarise,  # imported here: Hydra imports this module at start
        )

        returns = []
        try:
            for num, overrides, job in zip(nums, job_overrides, jobs):
                returns.append(self.collect(job, list(overrides), num))
                summarise(sweep_dir)  # after each job, so that a long sweep can be followed
        finally:  # also when this process is stopped while it waits (Ctrl+C): the jobs still running are incomplete
            summarise(sweep_dir)
        return returns

    def collect(self, job: Any, overrides: list[str], num: int) -> JobReturn:
        """Job `num`'s result (task 0's, the one that records it), or a failed job's record when it has none."""
        from submitit.core.utils import UncompletedJobError

        from vit_mnist.runtime.runner import FAILED_OBJECTIVE, record_failure

        first = job.task(0) if job.num_tasks > 1 else job
        if self._EXECUTOR == "local":
            first._results_timeout_s = 0  # its process has exited: no shared file system to wait for
        try:
            return first.results()[0]
        except UncompletedJobError as error:
            reason = no_result_reason(job, error)
        for k in range(1, job.num_tasks):  # a DDP task that failed with an error says what went on
            other = job.task(k)
            if self._EXECUTOR == "local":
                other._results_timeout_s = 0
            failed = other.exception()
            if failed is not None and "failed during processing" in str(failed):
                reason += f" Task {k} failed: {error_line(str(failed))}"
                break
        log.error("job %d failed: %s", num, reason)
        try:
            folder, task_overrides = self.job_folder(overrides, num)
        except Exception:  # the sweep goes on; the summary then lacks this job
            log.exception("could not find job %d's folder to record its failure", num)
            return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=FAILED_OBJECTIVE)
        if not (folder / ".hydra" / "overrides.yaml").is_file():  # killed before Hydra made the folder
            (folder / ".hydra").mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(task_overrides), folder / ".hydra" / "overrides.yaml")
        if not (folder / "metrics.json").is_file():  # a failure the job recorded itself says more
            record_failure(folder, reason)
        return JobReturn(overrides=overrides, working_dir=str(folder), task_name=str(self.config.hydra.job.name),
                         status=JobStatus.COMPLETED, _return_value=FAILED_OBJECTIVE)
