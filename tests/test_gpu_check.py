"""`make gpu-check` (scripts/gpu_check.sh) cannot lie: every step run (DRY_RUN=1 on the CPU), a failure named and
non-zero, a GPU that torch cannot use or missing data refused; subprocesses keep the caller's PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the check would run for real")


def gpu_check(tmp_path: Path, data_dir: Path | None = None, path: str | None = None, **env: str
              ) -> subprocess.CompletedProcess:
    extra = {"GPU_CHECK_DIR": str(tmp_path / "gpu_check"), "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore", **env}
    if data_dir is not None:
        extra["VIT_MNIST_DATA_DIR"] = str(data_dir)
    if path is not None:
        extra["PATH"] = path
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=tmp_path,
                          env={**subprocess_env(), **extra}, capture_output=True, text=True, timeout=600)


def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    result = gpu_check(tmp_path)
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU here") and "torch" in lines[0]
    assert not (tmp_path / "gpu_check").exists()


def test_a_gpu_that_torch_cannot_use_fails_the_check(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    result = gpu_check(tmp_path, path=f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 1
    assert "FAILED (torch)" in result.stdout and "NVIDIA H100" in result.stdout and "CUDA build" in result.stdout


def test_missing_data_fails_before_any_step(tmp_path: Path) -> None:
    result = gpu_check(tmp_path, data_dir=tmp_path / "empty", DRY_RUN="1")
    assert result.returncode == 1 and "FAILED (data)" in result.stdout and "train-images-idx3-ubyte" in result.stdout
    assert not (tmp_path / "gpu_check").exists()


def test_a_dry_run_runs_every_step_on_the_cpu(tmp_path: Path, data_dir: Path) -> None:
    result = gpu_check(tmp_path, data_dir=data_dir, DRY_RUN="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = (tmp_path / "gpu_check" / "steps.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in steps] == ["tests", "fast", "bench", "note_budget"]
    assert all(": exit 0 in" in line for line in steps)
    report = (tmp_path / "gpu_check" / "gpu_check.md").read_text()
    assert "cpu (DRY_RUN=1)" in report and "| fast |" in report and "note_budget/0" in report
    assert result.stdout.strip().splitlines()[-1].startswith("gpu-check: every step passed")


def test_a_failing_step_is_named_and_fails_the_check(tmp_path: Path, data_dir: Path) -> None:
    # 3 heads do not divide the hidden size: the training step stops with its one-paragraph error
    result = gpu_check(tmp_path, data_dir=data_dir, DRY_RUN="1", ONLY="fast", EXTRA_ARGS="model.heads=3")
    assert result.returncode == 1
    assert "fast: exit 2" in result.stdout and result.stdout.strip().splitlines()[-1].startswith("gpu-check: FAILED (fast)")


def test_subprocesses_keep_the_caller_s_python_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # make gpu-check installs hydra-core and omegaconf into a folder on PYTHONPATH: the GPU tests' runs must see it
    site = tmp_path / "site"
    monkeypatch.setenv("PYTHONPATH", str(site))
    printed = subprocess.run([sys.executable, "-c", "import sys; print('\\n'.join(sys.path))"], env=subprocess_env(),
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert str(ROOT) in printed and str(site) in printed and printed.index(str(ROOT)) < printed.index(str(site))
