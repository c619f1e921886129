"""One failure policy for every entry: what a failed job leaves behind and what a sweeper sees does not depend
on which entry it came from (vit_mnist.runtime.runner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from vit_mnist.evaluation.evaluate import evaluate
from vit_mnist.evaluation.robustness import robustness
from vit_mnist.runtime.runner import FAILED_OBJECTIVE, objective_value, run_job
from vit_mnist.training.fit import train

ROOT = Path(__file__).resolve().parents[1]
# A user's mistake for each entry that writes a run folder, refused by the entry's checks.
MISTAKES = {
    "train": (train, ["model.patch_size=5"], "model.patch_size=5"),
    "evaluate": (evaluate, ["ckpt_path=missing.ckpt"], "ckpt_path=missing.ckpt does not exist"),
    "robustness": (robustness, ["ckpt_path=missing.ckpt"], "ckpt_path=missing.ckpt does not exist"),
}


def as_job_of(cfg: DictConfig, mode: RunMode) -> DictConfig:
    """`cfg` (composed by the tests' compose_config) as a job of a single run or of a multirun."""
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg):
        hydra_cfg.mode = mode
    return cfg


@pytest.fixture(autouse=True)
def _single_run_afterwards():
    yield
    if HydraConfig.initialized():
        with read_write(HydraConfig.get()):
            HydraConfig.get().mode = None


@pytest.mark.parametrize("entry", MISTAKES)
def test_a_failed_sweep_job_records_why_and_gives_the_same_value(entry: str, make_cfg, tmp_path: Path) -> None:
    job, overrides, message = MISTAKES[entry]
    out = tmp_path / entry
    cfg = as_job_of(make_cfg(*overrides, output_dir=out, config_name=entry), RunMode.MULTIRUN)
    assert run_job(cfg, job, objective="val/acc_best") is FAILED_OBJECTIVE
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["status"] == "failed" and message in recorded["error"]


@pytest.mark.parametrize("entry", MISTAKES)
def test_a_users_mistake_in_a_single_run_leaves_no_folder(entry: str, data_dir: Path, tmp_path: Path,
                                                          run_in_process) -> None:
    _, overrides, message = MISTAKES[entry]
    log_dir = tmp_path / "outputs"
    result = run_in_process(f"vit_mnist.{entry}", *overrides, f"paths.log_dir={log_dir}", cwd=tmp_path,
                            VIT_MNIST_DATA_DIR=str(data_dir))
    said = result.stderr.replace("\n", " ")
    assert result.returncode == 2 and said.startswith("error: ") and "Traceback" not in said, said[-2000:]
    assert message in said
    assert not log_dir.exists()  # neither the run folder nor the date folder Hydra made for it


def _bug(cfg: DictConfig) -> dict[str, Any]:
    raise KeyError("a bug in the job, not the user's mistake")


def test_a_bug_surfaces_in_a_single_run_and_is_recorded_in_a_sweep(make_cfg, tmp_path: Path) -> None:
    single = tmp_path / "single"
    cfg = as_job_of(make_cfg(output_dir=single), RunMode.RUN)
    with pytest.raises(KeyError, match="a bug in the job"):
        run_job(cfg, _bug, objective="val/acc_best")
    assert single.is_dir()  # kept, with its log, for whoever fixes the bug

    swept = tmp_path / "swept"
    cfg = as_job_of(make_cfg(output_dir=swept), RunMode.MULTIRUN)
    assert run_job(cfg, _bug, objective="val/acc_best") is FAILED_OBJECTIVE
    assert json.loads((swept / "metrics.json").read_text())["status"] == "failed"


def test_a_users_mistake_keeps_a_folder_that_holds_a_checkpoint(make_cfg, tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"resume from me")
    cfg = as_job_of(make_cfg("model.patch_size=5", output_dir=out), RunMode.RUN)
    with pytest.raises(SystemExit) as exit_info:
        run_job(cfg, train, objective="val/acc_best")
    assert exit_info.value.code == 2 and (out / "checkpoints" / "last.ckpt").is_file()


def test_objective_is_a_finite_number_or_the_failed_value() -> None:
    assert objective_value({"val/acc_best": 0.9}, "val/acc_best") == 0.9
    assert objective_value({"val/acc_best": float("nan")}, "val/acc_best") is FAILED_OBJECTIVE
    assert objective_value({"split": "val", "val/acc": 0.5}, lambda m: m[f"{m['split']}/acc"]) == 0.5
    assert objective_value({"status": 0}, None) is None
