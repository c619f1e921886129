"""The Optuna sweeper: ask the study for trials, launch them through Hydra's launcher, tell it how each one ended.

Behind `hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml, the plugin shell in hydra_plugins/vit_mnist_sweeper).
Each batch of `n_jobs` trials is launched with whichever launcher is configured (basic: one after the other in this
process; submitit_local, slurm: in processes of their own), each job told its trial in `hydra.sweeper.trial`. A job
returns a number (COMPLETE), None (FAIL, its reason from its metrics.json kept as the trial's `fail_reason`) or a
PrunedTrial (PRUNED). A failed or pruned trial never ends the study; `max_failure_rate` can.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from vit_mnist.errors import UserError, report
from vit_mnist.sweeps.outcome import PrunedTrial
from vit_mnist.sweeps.space import (
    SearchSpace,
    grid_values,
    override_value,
    parse_search_space,
)
from vit_mnist.sweeps.study import (
    LIVE_TRIALS,
    build_pruner,
    build_sampler,
    create_study,
    is_grid,
    resolve_storage,
    trial_reference,
)

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
TrialState = optuna.trial.TrialState


class StudySweeper:
    """The sweeper's work; `hydra.sweeper.*` are its arguments (conf/hydra/sweeper/optuna.yaml)."""

    def __init__(self, sampler: Any = None, pruner: Any = None, direction: str = "maximize", storage: Any = None,
                 study_name: str | None = None, n_trials: int = 20, n_jobs: int = 1, max_failure_rate: float = 1.0,
                 params: Any = None, trial: Any = None, **unknown: Any) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        self.unknown = sorted(unknown)  # refused in sweep(), where a UserError is reported as one paragraph
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                               task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        """Run the study; a mistake in its config ends the sweep with one paragraph, before any trial."""
        try:
            self._sweep(arguments)
        except UserError as e:
            report(e)

    def _sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        self._check_options()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        space = parse_search_space(self.params, arguments)
        if not space.distributions:
            raise UserError("The Optuna sweep has nothing to search: give hydra.sweeper.params (e.g. "
                            "hparams_search=optuna) or a searched override such as 'model.depth=choice(2,4)'.")
        n_trials = self.n_trials
        if is_grid(self.sampler_cfg):
            grid = grid_values(space)
            sampler = build_sampler(self.sampler_cfg, grid)
            n_trials = min(n_trials, math.prod(len(v) for v in grid.values()))
        else:
            sampler = build_sampler(self.sampler_cfg)
        pruner = build_pruner(self.pruner_cfg)
        in_process = type(self.launcher).__name__ == "BasicLauncher"  # Hydra's default: jobs in this process
        storage = resolve_storage(self.storage, in_process, sweep_dir)
        study = create_study(self.study_name, storage, self.direction, sampler, pruner)
        log.info("Optuna %s study %r in %s: %d trials, %d at a time; sampler %s, pruner %s", optuna.__version__,
                 study.study_name, storage or "memory", n_trials, self.n_jobs, type(sampler).__name__,
                 type(pruner).__name__)

        outcomes: Counter[str] = Counter()
        reasons: list[str] = []
        job_idx, remaining = 0, n_trials
        while remaining > 0:
            # every searched value sampled at once, from the distributions as parsed (log, step, choices)
            batch = [study.ask(space.distributions) for _ in range(min(self.n_jobs, remaining))]
            overrides = [self._overrides(study, trial, space, storage) for trial in batch]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
            except BaseException:  # Ctrl+C, a launcher's own error: no trial left RUNNING in a shared storage
                for trial in batch:
                    tell(study, trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            finally:
                for trial in batch:
                    LIVE_TRIALS.pop((study.study_name, trial._trial_id), None)
            job_idx += len(returns)
            remaining -= len(batch)
            states = [self._tell(study, trial, ret, reasons) for trial, ret in zip(batch, returns)]
            outcomes.update(s.name for s in states)
            failed = sum(s == TrialState.FAIL for s in states)
            if failed / len(batch) > self.max_failure_rate:
                log.error("%d of the %d trials of the last batch failed, more than hydra.sweeper.max_failure_rate="
                          "%s: the sweep stops here (%d trials not run).", failed, len(batch),
                          self.max_failure_rate, remaining)
                break
        self._write_results(study, sweep_dir, outcomes, reasons)

    def _check_options(self) -> None:
        if self.unknown:
            raise UserError(f"hydra.sweeper has no option(s) {', '.join(self.unknown)}: its options are sampler, "
                            "pruner, direction, storage, study_name, n_trials, n_jobs, max_failure_rate and params "
                            "(conf/hydra/sweeper/optuna.yaml).")
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"hydra.sweeper.{key}={value!r} must be a whole number of at least 1.")
        if not isinstance(self.max_failure_rate, (int, float)) or not 0.0 <= self.max_failure_rate <= 1.0:
            raise UserError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate!r} must be in [0, 1]: the share "
                            "of a batch's trials that may fail before the sweep stops (1.0: never stop).")

    def _overrides(self, study: optuna.Study, trial: optuna.trial.Trial, space: SearchSpace,
                   storage: str | None) -> list[str]:
        """One job's overrides: its sampled values, the fixed ones, and which trial it runs."""
        for key, value in space.fixed_values().items():
            trial.set_user_attr(key, value)  # kept with the trial: what the study's values were measured with
        if storage is None:
            LIVE_TRIALS[(study.study_name, trial._trial_id)] = trial
        sampled = [f"{key}={override_value(value)}" for key, value in trial.params.items()]
        return [*sampled, *space.fixed.values(), trial_reference(study, trial, storage)]

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn,
              reasons: list[str]) -> TrialState:
        """Record how the trial's job ended: COMPLETE with its value, PRUNED, or FAIL with the reason."""
        try:
            value, raised = ret.return_value, None
        except Exception as e:  # the job raised past the runner's failure policy
            value, raised = None, f"{type(e).__name__}: {' '.join(str(e).split())}"
        if isinstance(value, PrunedTrial):
            tell(study, trial, state=TrialState.PRUNED)
            log.info("Trial %d pruned after %d epochs", trial.number, value.epochs)
            return TrialState.PRUNED
        number = _finite(value)
        if number is None:
            reason = raised or job_error(ret) or f"the job returned {value!r}, not a number"
            trial.set_user_attr("fail_reason", reason)
            tell(study, trial, state=TrialState.FAIL)
            log.warning("Trial %d failed: %s", trial.number, reason)
            reasons.append(f"trial {trial.number}: {reason}")
            return TrialState.FAIL
        tell(study, trial, number)
        return TrialState.COMPLETE

    def _write_results(self, study: optuna.Study, sweep_dir: Path, outcomes: Counter[str], reasons: list[str]) -> None:
        """optimization_results.yaml: the study's best trial so far (every worker's), and this sweep's counts."""
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        counts = {state.lower(): outcomes.get(state, 0) for state in ("COMPLETE", "PRUNED", "FAIL")}
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "this_sweep": counts}
        if done:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
        else:
            results.update(best_trial=None, best_params=None, best_value=None)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        if not outcomes.get("COMPLETE"):
            log.error(no_result_paragraph(sum(outcomes.values()), outcomes, reasons, sweep_dir, bool(done)))


def no_result_paragraph(n: int, outcomes: Counter[str], reasons: list[str], sweep_dir: Path,
                        study_has_best: bool) -> str:
    """What to say when none of this sweep's trials finished."""
    first = f" The first failure, {reasons[0].rstrip('.')}." if reasons else ""
    results = sweep_dir / RESULTS_FILE
    best = (f"{results} holds the study's best trial, from other sweeps on its storage." if study_has_best
            else f"{results} has no best trial.")
    return (f"No trial of this sweep finished: of {n}, {outcomes.get('FAIL', 0)} failed and "
            f"{outcomes.get('PRUNED', 0)} were pruned.{first} Every job's reason is in its metrics.json and in "
            f"{sweep_dir / 'sweep_summary.md'}; {best} A mistake that every trial shares (a shape, a path, an option) "
            "shows at once in a single run of one trial's overrides (with hydra.mode=RUN).")


def tell(study: optuna.Study, trial: optuna.trial.Trial, value: float | None = None, **kwargs: Any) -> None:
    """`study.tell`, where the grid sampler's end of the grid is no error: its after_trial calls `study.stop()`,
    which Optuna allows only inside `optimize` (the trial's state is stored before that raises)."""
    try:
        study.tell(trial, value, **kwargs)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def job_error(ret: JobReturn) -> str | None:
    """The reason a failed job wrote into its metrics.json (vit_mnist.runtime.runner), if it wrote one."""
    try:
        out_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        return str(json.loads((out_dir / "metrics.json").read_text()).get("error") or "") or None
    except Exception:  # no Hydra config, no file, unreadable: the caller says what it knows
        return None
