"""Optuna sweeps beyond pruning: the search-space grammar, what a search trial skips after fitting, a sweep whose every
trial fails, and a user's mistakes in the sweeper's config as one paragraph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tests.conftest import TINY, compose_config
from vit_mnist.errors import UserError
from vit_mnist.runtime.paths import CONFIG_DIR
from vit_mnist.sweeps.space import grid_values, parse_search_space
from vit_mnist.training.checkpoints import read_checkpoint
from vit_mnist.training.checks import validate
from vit_mnist.training.fit import train

FDR = [*(a for a in TINY if not a.startswith("callbacks.")), "debug=fdr", "test=false"]


def run_cli(args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vit_mnist.train", *args, f"paths.data_dir={data_dir}",
                           f"paths.log_dir={cwd / 'outputs'}"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_search_space_grammar() -> None:
    space = parse_search_space(
        {"optimizer.lr": "tag(log, interval(1e-4, 3e-3))", "model.depth": "choice(2, 4, 6)", "model.heads": 4},
        ["data.batch_size=range(32, 129, 32)", "model.mlp_dim=tag(int, interval(64, 256))", "model.heads=choice(2,4)",
         "model.depth=6", "seed=1,2"])
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-4, 3e-3, log=True)
    assert d["data.batch_size"] == IntDistribution(32, 128, step=32)  # Hydra's range: the stop left out
    assert d["model.mlp_dim"] == IntDistribution(64, 256)
    assert d["model.heads"] == CategoricalDistribution([2, 4]) and d["seed"] == CategoricalDistribution([1, 2])
    assert "model.depth" not in d and space.fixed == {"model.depth": "model.depth=6"}  # the command line pins it
    assert space.fixed_values() == {"model.depth": "6"}
    with pytest.raises(UserError, match="interval"):
        grid_values(space)  # the grid sampler needs discrete values
    assert grid_values(parse_search_space(None, ["a=choice(x,y)", "b=range(1,4)"])) == {"a": ["x", "y"],
                                                                                         "b": [1, 2, 3]}


@pytest.mark.parametrize(("entry", "words"), [
    ("optimizer.lr=tag(log, interval(0, 1))", ["optimizer.lr", "above 0"]),
    ("model.depth=interval(6, 2)", ["model.depth", "below its high end"]),
    ("model.depth=tag(int, interval(1.5, 4))", ["whole numbers"]),
    ("model.depth=tag(sqrt, interval(1, 4))", ["sqrt", "log"]),
    ("model.depth=range(4, 2)", ["model.depth", "stop"]),
    ("model.depth=choice(2,2)", ["repeats"]),
    ("model.depth=choice(2", ["cannot be read", "choice("]),
])
def test_search_space_mistakes_name_the_key(entry: str, words: list[str]) -> None:
    with pytest.raises(UserError) as error:
        parse_search_space(None, [entry])
    assert all(w in str(error.value) for w in words), str(error.value)


def test_hparams_search_makes_trials_skip_the_after_fit_work_and_a_single_run_keeps_it() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        single = compose("train", overrides=[])
        search = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert single.after_fit == "full" and search.after_fit == "search"
    assert search.hydra.sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert search.hydra.sweeper.pruner.n_startup_trials >= 1
    with pytest.raises(UserError, match="after_fit"):
        validate(compose_config(["after_fit=some"], Path("/nonexistent")))


def test_a_search_trial_writes_no_calibration_detector_or_figures(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(compose_config(TINY + [f"paths.data_dir={data_dir}", "trainer.max_epochs=1",
                                           "trainer.limit_train_batches=4", "after_fit=search", "robustness=true",
                                           "robustness_images=20"], out))
    checkpoint = read_checkpoint(metrics["best_checkpoint"])
    assert "calibration" not in checkpoint and not [k for k in checkpoint if "detector" in k]
    assert metrics["test/acc"] > 0 and "test/mca" not in metrics  # tested, but no robustness benchmark
    assert not [k for k in metrics if k.startswith(("calibration/val", "verdict/"))]
    assert (out / "classification_report.json").is_file() and not list(out.glob("*.png"))
    assert 0 < metrics["after_fit_time_s"] and "test_time_s" in metrics and "calibration_and_detector_time_s" not in metrics
    assert json.loads((out / "metrics.json").read_text())["after_fit_time_s"] == metrics["after_fit_time_s"]


def test_a_sweep_whose_every_trial_fails_ends_with_its_summary_and_one_paragraph(data_dir: Path,
                                                                                tmp_path: Path) -> None:
    # heads=3 cannot split TINY's hidden size 32: every trial fails its config check
    sweep_dir = tmp_path / "multirun"
    result = run_cli(["-m", "hparams_search=optuna", *FDR, "model.heads=3", "hydra.sweeper.n_trials=2",
                      f"hydra.sweep.dir={sweep_dir}"], data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "No trial of this sweep finished: of 2, 2 failed and 0 were pruned" in output
    assert "model.heads=3" in output.split("No trial of this sweep finished")[1]  # the first reason, said once
    assert "2 jobs: 0 ok, 2 failed, 0 incomplete" in (sweep_dir / "sweep_summary.md").read_text()
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] is None and results["this_sweep"] == {"complete": 0, "pruned": 0, "fail": 2}


def test_a_sweeper_mistake_is_one_paragraph_before_any_trial(data_dir: Path, tmp_path: Path) -> None:
    # through the CLI: Hydra builds this project's sweeper from hydra_plugins, which reports the mistake
    result = run_cli(["-m", "hparams_search=optuna", *FDR, "hydra.sweeper.pruner=medain",
                      f"hydra.sweep.dir={tmp_path / 'multirun'}"], data_dir, tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert all(w in result.stderr for w in ("medain", "median", "hyperband", "none")), result.stderr
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").glob("*/metrics.json"))


@pytest.mark.parametrize(("overrides", "arguments", "words"), [
    ([], ["optimizer.lr=tag(log, interval(0, 1))"], ["optimizer.lr", "log scale"]),
    (["+hydra.sweeper.pruner.n_startup=3"], [], ["hydra.sweeper.pruner", "n_startup", "~hydra.sweeper.pruner"]),
    (["hydra.sweeper.storage=nosuchdb://x"], [], ["storage", "nosuchdb"]),
    (["hydra.sweeper.n_trials=0"], [], ["n_trials", "at least 1"]),
])
def test_sweeper_mistakes_in_its_config(overrides: list[str], arguments: list[str], words: list[str],
                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vit_mnist.sweeps.sweeper import StudySweeper

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", f"hydra.sweep.dir={tmp_path}", *overrides],
                      return_hydra_config=True)
    sweeper = StudySweeper(**{k: v for k, v in cfg.hydra.sweeper.items() if not k.startswith("_")})
    sweeper.config, sweeper.launcher = cfg, object()  # no launch: the mistake stops the sweep before any trial
    with pytest.raises(SystemExit) as stopped:
        sweeper.sweep(arguments)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("error: ") and all(w in err for w in words), err


@pytest.mark.parametrize(("pruner", "cls"), [("median", "MedianPruner"), ("hyperband", "HyperbandPruner"),
                                             ("none", "NopPruner")])
@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "grid"])
def test_every_sampler_and_pruner_option_builds(sampler: str, pruner: str, cls: str) -> None:
    from vit_mnist.sweeps.study import build_pruner, build_sampler, is_grid

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", f"hydra/sweeper/sampler={sampler}",
                                          f"hydra/sweeper/pruner={pruner}", "trainer.max_epochs=7"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    built = build_pruner(sweeper.pruner)
    assert type(built).__name__ == cls
    if pruner == "hyperband":
        assert built._max_resource == 7  # the trial's validations: trainer.max_epochs
    sampler_cfg = OmegaConf.create(OmegaConf.to_container(sweeper.sampler, resolve=True))
    if sampler in ("random", "grid"):  # TPE's start-up count, set by hparams_search=optuna, is not theirs
        del sampler_cfg["n_startup_trials"]
    grid = {"model.depth": [2, 4]} if is_grid(sampler_cfg) else None
    assert type(build_sampler(sampler_cfg, grid)).__name__.lower().startswith(sampler[:3])


def test_grid_sampler_runs_each_combination_once(data_dir: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun"
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    # only the patch size is searched (TINY and the command line fix the rest), so the grid has 2 points
    result = run_cli(["-m", "hparams_search=optuna", *FDR, "hydra/sweeper/sampler=grid",
                      "~hydra.sweeper.sampler.n_startup_trials", "model.patch_size=choice(7,14)",
                      "optimizer.weight_decay=0.01", "hydra.sweeper.n_trials=5", f"hydra.sweeper.storage={storage}",
                      f"hydra.sweep.dir={sweep_dir}"], data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="vit_mnist", storage=storage).trials
    assert sorted(t.params["model.patch_size"] for t in trials) == [7, 14]  # n_trials capped at the grid's size
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
