"""An Optuna (>= 5) study kept in a database: two sweeps at once share it, a rerun continues it, a failed trial stays
FAIL with its reason.

Against sqlite always; against a PostgreSQL server too when VIT_MNIST_POSTGRES_URL names a database the test may
write to (e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/postgres, with psycopg2-binary installed); its study is deleted
afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import TINY

pytestmark = pytest.mark.xdist_group("optuna_storage")

POSTGRES_URL = os.environ.get("VIT_MNIST_POSTGRES_URL", "")
# One batch of training and validation per trial (debug=fdr): a sweep's time is mostly its process start-up.
# TINY pins the learning rate and the shape but the patch size, so the study searches weight decay and patch size.
# debug=fdr has no callbacks, so TINY's callbacks.* settings go.
FDR = [*(a for a in TINY if not a.startswith("callbacks.")), "debug=fdr", "test=false"]


def start_sweep(storage: str, study: str, sweep_dir: Path, seed: int, n_trials: int, data_dir: Path, cwd: Path,
                *extra: str) -> subprocess.Popen:
    """A worker of the study: hparams_search=optuna with its own sweep folder and sampler seed."""
    args = ["-m", "hparams_search=optuna", *FDR, f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweeper.sampler.seed={seed}", *extra,
            f"hydra.sweep.dir={sweep_dir}", f"paths.data_dir={data_dir}", f"paths.log_dir={cwd / 'outputs'}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vit_mnist.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*workers: subprocess.Popen) -> None:
    """Wait for every worker, then check that each one ended well."""
    errors = [worker.communicate(timeout=300)[1] for worker in workers]
    for worker, err in zip(workers, errors):
        assert worker.returncode == 0, err[-3000:]


def job_folders(*sweep_dirs: Path) -> list[Path]:
    return [job for d in sweep_dirs for job in sorted(d.iterdir()) if (job / ".hydra").is_dir()]


def trial_of(job: Path, trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
    """The one trial of the study whose parameters are those this job folder ran with."""
    overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
    matches = [t for t in trials if all(k in overrides and float(overrides[k]) == float(v)
                                        for k, v in t.params.items())]
    assert len(matches) == 1, f"{job} matches trials {[t.number for t in matches]}"
    return matches[0]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def study(request: pytest.FixtureRequest, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two workers started together on one database (2 trials each), then a rerun of 1 trial that fails."""
    cwd = tmp_path_factory.mktemp(f"optuna_{request.param}")
    if request.param == "sqlite":
        storage, name = f"sqlite:///{cwd / 'optuna.db'}", "shared"
    else:
        if not POSTGRES_URL:
            pytest.skip("no PostgreSQL server given: set VIT_MNIST_POSTGRES_URL=postgresql+psycopg2://user@host:port/"
                        "database (and pip install psycopg2-binary) to run the shared study against one")
        storage, name = POSTGRES_URL, f"vit-mnist-test-{uuid.uuid4().hex[:8]}"  # beside whatever the server holds
    # created once before the workers start, as docs/scaling.md says: two processes that both find an empty database
    # race to create Optuna's tables (PostgreSQL: UniqueViolation on "studydirection")
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    # every worker of a study gets its own seed: with the same one they would propose the same parameters
    workers = [start_sweep(storage, name, cwd / d, seed, 2, data_dir, cwd) for d, seed in (("a", 1), ("b", 2))]
    finish(*workers)
    first = optuna.load_study(study_name=name, storage=storage).trials
    # the rerun: heads=3 cannot split hidden size 32, so its one trial fails
    finish(start_sweep(storage, name, cwd / "rerun", 3, 1, data_dir, cwd, "model.heads=3"))
    yield {"storage": storage, "name": name, "cwd": cwd, "first": first,
           "trials": optuna.load_study(study_name=name, storage=storage).trials}
    if request.param == "postgresql":
        optuna.delete_study(study_name=name, storage=storage)


def test_the_study_runs_on_optuna_5() -> None:
    assert int(optuna.__version__.split(".")[0]) >= 5


def test_two_sweeps_on_one_database_share_the_study(study: dict) -> None:
    first, cwd = study["first"], study["cwd"]
    assert sorted(t.number for t in first) == [0, 1, 2, 3]  # 2 trials from each worker, numbered by the database
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in first)
    assert set(first[0].params) == {"optimizer.weight_decay", "model.patch_size"}  # TINY fixes the rest
    # none run twice: each trial of the study is the run of exactly one job folder of one of the two workers
    jobs = job_folders(cwd / "a", cwd / "b")
    assert len(jobs) == 4
    ran = [trial_of(job, first) for job in jobs]
    assert sorted(t.number for t in ran) == [0, 1, 2, 3]
    for job, trial in zip(jobs, ran):  # what Optuna recorded is what the job measured
        assert trial.value == pytest.approx(json.loads((job / "metrics.json").read_text())["val/acc_best"])
        assert list(trial.intermediate_values) == [0]  # its one validation, reported by the job through the database
    assert len({tuple(sorted(t.params.items())) for t in first}) == 4


def test_a_rerun_continues_the_study_and_records_its_failed_trial(study: dict) -> None:
    first, trials, cwd = study["first"], study["trials"], study["cwd"]
    names = [s.study_name for s in optuna.get_all_study_summaries(study["storage"])]
    assert names.count(study["name"]) == 1  # the same study, not a new one
    assert [(t.number, t.params, t.value) for t in trials[:4]] == [(t.number, t.params, t.value) for t in first]
    failed = trials[4]
    assert failed.number == 4 and failed.state == optuna.trial.TrialState.FAIL and failed.value is None
    assert failed.user_attrs["model.heads"] == "3"  # the command line's fixed values are kept with the trial
    assert "model.heads=3" in failed.user_attrs["fail_reason"]  # and why it failed, from the job
    # the reason is in the job's metrics.json and the rerun's sweep summary
    metrics = json.loads((cwd / "rerun" / "0" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "model.heads=3" in metrics["error"]
    assert "1 jobs: 0 ok, 1 failed" in (cwd / "rerun" / "sweep_summary.md").read_text()
    # the rerun's best is the study's best, found by the first two workers
    best = yaml.safe_load((cwd / "rerun" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(t.value for t in first))
