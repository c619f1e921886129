"""Sweeps through the real CLI: a multirun with a failing job, its summary files, an Optuna study, the SLURM config."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY
from vit_mnist.reports.sweep import write_sweep_report
from vit_mnist.sweep_report import main as sweep_report_main

pytestmark = pytest.mark.xdist_group("sweep")

# One epoch of a few batches: a job takes a second or two, so a sweep's time is mostly process start-up.
FAST = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=4"]


def run_cli(args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "vit_mnist.train", *args, f"paths.data_dir={data_dir}",
                           f"paths.log_dir={cwd / 'outputs'}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2x2 multirun in which both jobs with model.heads=3 are impossible (hidden size 32)."""
    cwd = tmp_path_factory.mktemp("sweep")
    sweep_dir = cwd / "multirun"
    result = run_cli(["-m", *FAST, "model.patch_size=7,14", "model.heads=2,3", f"hydra.sweep.dir={sweep_dir}"],
                     data_dir, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def test_multirun_gives_one_folder_per_job_and_records_failures(sweep: Path) -> None:
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    assert not (sweep.parent / "outputs").exists()  # nothing written anywhere else
    for job in jobs:
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        overrides = (sweep / job / ".hydra" / "overrides.yaml").read_text()
        if "model.heads=3" in overrides:
            assert metrics["status"] == "failed"
            assert "model.heads=3" in metrics["error"] and "model.hidden_dim=32" in metrics["error"]
            assert not (sweep / job / "checkpoints").exists()
        else:
            assert "status" not in metrics and metrics["val/acc_best"] > 0 and metrics["epochs"] == 1
            # one TensorBoard run per job under the sweep folder, with the HParams entry comparing them
            events = EventAccumulator(str(sweep / job / "tensorboard"))
            events.Reload()
            assert "val/acc_best" in events.Tags()["scalars"]
            assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_summary_written_at_the_end_of_the_multirun(sweep: Path) -> None:
    rows = read_csv(sweep / "sweep_summary.csv")
    assert len(rows) == 4
    ok, failed = [r for r in rows if r["status"] == "ok"], [r for r in rows if r["status"] == "failed"]
    assert len(ok) == 2 and len(failed) == 2
    assert rows[:2] == ok  # jobs with a result first, best first
    assert float(ok[0]["val_acc_best"]) >= float(ok[1]["val_acc_best"])
    for row in ok:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["val_acc_best"]) == pytest.approx(metrics["val/acc_best"])
        assert float(row["test_acc"]) == pytest.approx(metrics["test/acc"])
        assert int(row["num_parameters"]) == metrics["num_parameters"]
        assert float(row["train_images_per_s"]) == pytest.approx(metrics["train_images_per_s"])
        assert row["heads"] == "2" and f"model.patch_size={row['patch_size']}" in row["overrides"]
        assert row["epochs"] == "1" and float(row["wall_time_s"]) > 0
        # both times of each job: the training loop alone, and the whole job around it
        assert float(row["train_time_s"]) == pytest.approx(metrics["train_time_s"])
        assert 0 < float(row["train_time_s"]) < float(row["wall_time_s"])
    for row in failed:
        assert row["heads"] == "3" and "not divisible" in row["error"] and row["val_acc_best"] == ""
    markdown = (sweep / "sweep_summary.md").read_text()
    assert "4 jobs: 2 ok, 2 failed, 0 incomplete" in markdown
    assert markdown.count("| ok |") == 2 and markdown.count("| failed |") == 2
    assert "not divisible" in markdown  # the reason, not just the status
    assert "| training loop (s) | whole job (s) |" in markdown
    assert (sweep / "sweep_summary.png").stat().st_size > 5000


def test_report_cli_counts_a_killed_job_as_incomplete(sweep: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "sweep"
    for job in ("0", "1"):  # job 0 finished; job 1 "killed": its folder lost metrics.json
        (copy / job / ".hydra").mkdir(parents=True)
        for name in ("overrides.yaml", "config.yaml"):
            (copy / job / ".hydra" / name).write_text((sweep / job / ".hydra" / name).read_text())
    (copy / "0" / "metrics.json").write_text((sweep / "0" / "metrics.json").read_text())
    sweep_report_main([str(copy)])
    assert "1 ok, 0 failed, 1 incomplete" in capsys.readouterr().out
    rows = read_csv(copy / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["ok", "incomplete"] and "killed" in rows[1]["error"]


def test_report_cli_rejects_a_folder_without_jobs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sweep_report_main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "outputs/multirun/<date>/<time>" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_optuna_study_goes_on_after_a_failed_trial(data_dir: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "optuna"
    # heads=3 cannot split hidden size 32; with this seed the random start-up trials draw it twice in three
    args = [a for a in FAST if not a.startswith("model.heads=")]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # a new database file, made by the sweep
    result = run_cli(["-m", "hparams_search=optuna", *args, "test=false", "hydra.sweeper.n_trials=3",
                      "hydra.sweeper.sampler.seed=1", "model.heads=choice(2,3)", f"hydra.sweeper.storage={storage}",
                      f"hydra.sweep.dir={sweep_dir}"], data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert len(rows) == 3
    assert {r["status"] for r in rows} == {"ok", "failed"}
    assert all(r["status"] == "failed" for r in rows if r["heads"] == "3")
    # the study searched the shape: every trial has its own patch size, learning rate and weight decay
    assert all("model.patch_size=" in r["overrides"] and "optimizer.weight_decay=" in r["overrides"] for r in rows)
    best = (sweep_dir / "optimization_results.yaml").read_text()
    best_ok = max((r for r in rows if r["status"] == "ok"), key=lambda r: float(r["val_acc_best"]))
    assert f"best_value: {float(best_ok['val_acc_best'])}" in best
    # the study is in the database: job n is trial n, FAIL where the job failed, else its val/acc_best
    trials = optuna.load_study(study_name="vit_mnist", storage=storage).trials
    assert {str(t.number): t.state.name for t in trials} == {
        r["job"]: "FAIL" if r["status"] == "failed" else "COMPLETE" for r in rows}
    assert all(t.value == pytest.approx(float(r["val_acc_best"])) for t in trials for r in rows
               if r["job"] == str(t.number) and r["status"] == "ok")


def test_summary_reads_a_job_folder_without_hydra_files(sweep: Path, tmp_path: Path) -> None:
    # e.g. a DDP process's folder or a run copied by hand: metrics.json alone makes a job, an empty folder does not
    ok_job = next(r["job"] for r in read_csv(sweep / "sweep_summary.csv") if r["status"] == "ok")
    metrics = json.loads((sweep / ok_job / "metrics.json").read_text())
    (tmp_path / "runs" / "7").mkdir(parents=True)
    (tmp_path / "runs" / "7" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "runs" / "8").mkdir()
    rows = write_sweep_report(tmp_path / "runs")
    assert [(r.job, r.status, r.val_acc_best) for r in rows] == [("7", "ok", pytest.approx(metrics["val/acc_best"]))]
    assert rows[0].patch_size is None and rows[0].num_parameters == metrics["num_parameters"]


def test_slurm_launcher_config_composes_and_builds(tmp_path: Path) -> None:
    import hydra
    from hydra import compose, initialize_config_dir

    from vit_mnist.runtime.paths import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4",
                                          "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                                          "hydra.launcher.nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.tasks_per_node == cfg.trainer.devices and launcher.nodes == cfg.trainer.num_nodes
    built = hydra.utils.instantiate(launcher)
    assert type(built).__name__ == "SlurmLauncher"
    with pytest.raises(Exception, match="partishun"):  # checked against the plugin's schema
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partishun=gpu"],
                    return_hydra_config=True)


def test_submitit_local_launcher_runs_the_jobs_and_records_a_failure(data_dir: Path, tmp_path: Path) -> None:
    """hydra/launcher=submitit_local: the submitit code path of the SLURM launcher, each job in its own process."""
    sweep_dir = tmp_path / "multirun"
    result = run_cli(["-m", "hydra/launcher=submitit_local", *FAST, "test=false", "model.heads=2,3",
                      f"hydra.sweep.dir={sweep_dir}"], data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ok = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    failed = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert "status" not in ok and ok["val/acc_best"] > 0
    assert failed["status"] == "failed" and "model.heads=3" in failed["error"]
    assert (sweep_dir / ".submitit").is_dir()  # the jobs went through submitit
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]


def test_summary_shows_robustness_when_the_jobs_measured_it(sweep: Path, tmp_path: Path) -> None:
    ok_job = next(r["job"] for r in read_csv(sweep / "sweep_summary.csv") if r["status"] == "ok")
    metrics = json.loads((sweep / ok_job / "metrics.json").read_text())
    assert "test/mca" not in metrics and "test/mca" not in (sweep / "sweep_summary.md").read_text()
    for job, mca in (("a", 0.8125), ("b", 0.9375)):  # jobs of a sweep with robustness=true
        (tmp_path / "runs" / job).mkdir(parents=True)
        (tmp_path / "runs" / job / "metrics.json").write_text(json.dumps(
            {**metrics, "test/mca": mca, "test/other_writers": mca - 0.0625}))
    rows = write_sweep_report(tmp_path / "runs")
    assert sorted(r.test_mca for r in rows) == [0.8125, 0.9375]
    assert sorted(r.test_other_writers for r in rows) == [0.75, 0.875]
    summary = (tmp_path / "runs" / "sweep_summary.md").read_text()
    assert "| test/mca | test/other_writers |" in summary and "| 0.9375 | 0.8750 |" in summary
    assert {r["test_mca"] for r in read_csv(tmp_path / "runs" / "sweep_summary.csv")} == {"0.8125", "0.9375"}
