"""Pruning through the real CLI: a trial with a hopeless learning rate stops before its last epoch, is PRUNED in the
study and `pruned` in its metrics.json and the sweep summary; with the basic launcher (an in-memory study, the job in
the sweeper's process) and with submitit_local (each job in a process of its own, reporting through sqlite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import TINY

MAX_EPOCHS = 3
# Two trials, one learning rate each: with this sampler seed (TPE's random start-up trials) the first is 3e-3
# (learns, runs its 3 epochs), the second 1e-7 (learns nothing: below the first at its first validation, so pruned
# there). The median pruner may prune once 1 trial has finished. TINY's own learning rate is replaced by the search.
PRUNE = [*(a for a in TINY if not a.startswith("optimizer.lr=")), "test=false", f"trainer.max_epochs={MAX_EPOCHS}",
         "model.patch_size=7", "optimizer.lr=choice(0.003,1e-7)", "hydra.sweeper.sampler.seed=0",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.n_startup_trials=1"]


def run_sweep(data_dir: Path, cwd: Path, *extra: str) -> Path:
    sweep_dir = cwd / "multirun"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "vit_mnist.train", "-m", "hparams_search=optuna", *PRUNE, *extra,
                             f"hydra.sweep.dir={sweep_dir}", f"paths.data_dir={data_dir}",
                             f"paths.log_dir={cwd / 'outputs'}"],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def check_pruned_job(sweep_dir: Path) -> None:
    """Job 0 (lr 3e-3) ran every epoch; job 1 (lr 1e-7) stopped after its first, recorded as pruned."""
    lrs = [yaml.safe_load((sweep_dir / j / ".hydra" / "overrides.yaml").read_text()) for j in ("0", "1")]
    assert "optimizer.lr=0.003" in lrs[0] and "optimizer.lr=1e-07" in lrs[1], "the sampler's order changed"
    done = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    pruned = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert "status" not in done and done["epochs"] == MAX_EPOCHS
    assert pruned["status"] == "pruned" and 1 <= pruned["epochs"] < MAX_EPOCHS
    assert pruned["val/acc_best"] < done["val/acc_best"] and "stopped by the pruner" in pruned["reason"]
    assert (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file()  # it ended cleanly, its checkpoints kept
    summary = (sweep_dir / "sweep_summary.md").read_text()
    assert "2 jobs: 1 ok, 1 pruned, 0 failed, 0 incomplete" in summary
    assert "| 1 | pruned |" in summary and "## Jobs stopped by the pruner" in summary
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["this_sweep"] == {"complete": 1, "pruned": 1, "fail": 0}
    assert results["best_trial"] == 0 and results["best_value"] == pytest.approx(done["val/acc_best"])


def test_basic_launcher_prunes_a_hopeless_trial_of_an_in_memory_study(data_dir: Path, tmp_path: Path) -> None:
    check_pruned_job(run_sweep(data_dir, tmp_path))


def test_submitit_local_prunes_through_the_sweeps_own_sqlite_study(data_dir: Path, tmp_path: Path) -> None:
    # no storage given: the jobs run in processes of their own, so the sweeper keeps the study in the sweep folder
    sweep_dir = run_sweep(data_dir, tmp_path, "hydra/launcher=submitit_local")
    check_pruned_job(sweep_dir)
    assert (sweep_dir / ".submitit").is_dir()
    trials = optuna.load_study(study_name="vit_mnist", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    # each job reported val/acc after every validation it ran: 3 for the finished trial, 1 for the pruned one
    assert sorted(trials[0].intermediate_values) == [0, 1, 2] and sorted(trials[1].intermediate_values) == [0]
    assert trials[1].value == pytest.approx(trials[1].intermediate_values[0])  # Optuna keeps its last report
