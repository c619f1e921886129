"""The Optuna objects of a sweep, built from its config with clear errors: sampler, pruner, storage, the study, and
the trial a job runs (found again in the job's own process through the storage)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import optuna
from omegaconf import DictConfig, OmegaConf

from vit_mnist.errors import UserError

log = logging.getLogger(__name__)

# `hydra.sweeper.pruner=<name>` (a value rather than the group `hydra/sweeper/pruner=<name>`): the same pruners
PRUNERS = {"median": "optuna.pruners.MedianPruner", "hyperband": "optuna.pruners.HyperbandPruner",
           "none": "optuna.pruners.NopPruner"}
DIRECTIONS = ("maximize", "minimize")
# The trials of an in-memory study, asked in this process, by (study name, trial id): with the basic launcher a
# job runs in the sweeper's process and reports to its trial here, as there is no storage to reach it through.
LIVE_TRIALS: dict[tuple[str, int], optuna.trial.Trial] = {}


def build(cfg: Any, what: str, **kwargs: Any) -> Any:
    """Instantiate a `_target_` config of the sweeper (`what`: its key, for the message)."""
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except Exception as e:  # Hydra wraps the class's own TypeError / ValueError
        cause = e.__cause__ or e
        target = cfg.get("_target_", "?") if isinstance(cfg, DictConfig) else cfg
        said = " ".join(str(cause).split())
        # hparams_search=optuna gives TPE n_startup_trials, which the random and grid samplers do not take
        hint = " (hparams_search=optuna sets n_startup_trials for TPE)" if what == "sampler" else ""
        raise UserError(f"hydra.sweeper.{what} ({target}) could not be built: {said}. Its options are the keys of "
                        f"conf/hydra/sweeper/{what}/: check the names and values given on the command line, and drop "
                        f"a key this {what} does not take with ~hydra.sweeper.{what}.<key>{hint} "
                        "(docs/scaling.md#optuna-search).") from e


def build_sampler(cfg: Any, grid: dict[str, list[Any]] | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of `hydra.sweeper.sampler`; the grid sampler gets the search space's values."""
    if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
        given = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg
        raise UserError(f"hydra.sweeper.sampler is {given!r}: choose a sampler with hydra/sweeper/sampler=tpe (or "
                        "random, cmaes, grid).")
    if grid is not None:
        return build(cfg, "sampler", search_space=grid)
    return build(cfg, "sampler")


def is_grid(cfg: Any) -> bool:
    """Whether `hydra.sweeper.sampler` is Optuna's grid sampler, which takes the search space as an argument."""
    return isinstance(cfg, DictConfig) and str(cfg.get("_target_", "")).endswith("GridSampler")


def build_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    """The pruner of `hydra.sweeper.pruner` (a config of conf/hydra/sweeper/pruner/, a name, or null: none)."""
    if cfg is None:
        return optuna.pruners.NopPruner()
    if isinstance(cfg, str):
        if cfg not in PRUNERS:
            raise UserError(f"hydra.sweeper.pruner={cfg} is not a pruner: choose one of {', '.join(PRUNERS)} "
                            "(hydra/sweeper/pruner=median; its options as hydra.sweeper.pruner.<key>=...).")
        cfg = OmegaConf.create({"_target_": PRUNERS[cfg]})
    if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
        raise UserError(f"hydra.sweeper.pruner has no _target_: choose one with hydra/sweeper/pruner="
                        f"{'|'.join(PRUNERS)}.")
    pruner = build(cfg, "pruner")
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise UserError(f"hydra.sweeper.pruner builds a {type(pruner).__name__}, not an Optuna pruner: choose one "
                        f"with hydra/sweeper/pruner={'|'.join(PRUNERS)}.")
    return pruner


def resolve_storage(storage: Any, in_process: bool, sweep_dir: Path) -> str | None:
    """The study's storage URL. None (in memory) only where the jobs run in this process: jobs in processes of
    their own (submitit, SLURM) reach their trial through a database, by default a sqlite file in the sweep folder."""
    if storage is not None and not isinstance(storage, str):
        raise UserError(f"hydra.sweeper.storage={storage!r} is not a URL: give e.g. sqlite:///optuna.db or "
                        "postgresql://user@host/db, or null for a study in memory.")
    if storage or in_process:
        return storage or None
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{sweep_dir.resolve() / 'optuna.db'}"
    log.info("hydra.sweeper.storage is null and the jobs run in processes of their own: the study is kept in %s "
             "(give hydra.sweeper.storage=... to share it; on several machines, a database server)", url)
    return url


def create_study(study_name: str | None, storage: str | None, direction: str, sampler: optuna.samplers.BaseSampler,
                 pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The study, new or continued (`load_if_exists`), with a UserError where the storage or direction is wrong."""
    if direction not in DIRECTIONS:
        raise UserError(f"hydra.sweeper.direction={direction!r}: give maximize or minimize (this sweeper "
                        "optimises one objective, the value the train job returns: val/acc_best).")
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=direction, load_if_exists=True)
    except Exception as e:  # a storage URL that does not open, a missing driver, an existing study's other direction
        said = " ".join(str(e).split())
        raise UserError(f"The Optuna study {study_name!r} could not be opened in hydra.sweeper.storage={storage}: "
                        f"{type(e).__name__}: {said}. Check the URL (sqlite:///relative.db, "
                        "sqlite:////absolute/path.db, postgresql://user@host:port/db with its driver installed).") from e
    if study.direction.name.lower() != direction:
        raise UserError(f"The study {study.study_name!r} in {storage} was made to {study.direction.name.lower()}, "
                        f"but hydra.sweeper.direction={direction}: use the study's direction or another study_name.")
    return study


def trial_reference(study: optuna.Study, trial: optuna.trial.Trial, storage: str | None) -> str:
    """The Hydra override that tells a job which trial it runs: `hydra.sweeper.trial={...}`."""
    fields = {"number": trial.number, "id": trial._trial_id, "study": _quoted(study.study_name),
              "storage": _quoted(storage) if storage else "null"}
    return "hydra.sweeper.trial={" + ",".join(f"{k}:{v}" for k, v in fields.items()) + "}"


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def open_trial(sweeper_cfg: DictConfig) -> optuna.trial.Trial | None:
    """In a job: the trial it runs (from `hydra.sweeper.trial`, set by the sweeper), or None outside a study."""
    ref = sweeper_cfg.get("trial") if sweeper_cfg is not None else None
    if not ref or ref.get("id") is None:
        return None
    live = LIVE_TRIALS.get((str(ref.study), int(ref.id)))
    if live is not None:
        return live
    if not ref.get("storage"):
        raise UserError(f"Trial {ref.number} of the in-memory study {ref.study!r} runs in another process than its "
                        "sweeper, so it cannot report to it: give hydra.sweeper.storage=sqlite:///optuna.db "
                        "(or a server's URL).")
    study = optuna.load_study(study_name=str(ref.study), storage=str(ref.storage),
                              pruner=build_pruner(sweeper_cfg.get("pruner")),
                              sampler=optuna.samplers.RandomSampler())  # the job samples nothing
    return optuna.trial.Trial(study, int(ref.id))
