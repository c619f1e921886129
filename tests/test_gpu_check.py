"""`make gpu-check` (scripts/gpu_check.sh): on a machine without CUDA it says so in one line and exits 0."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the check would run for real")
def test_gpu_check_without_cuda_says_so_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check"
    env = {**os.environ, "GPU_CHECK_DIR": str(out)}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU here") and "torch" in lines[0]
    assert not out.exists()
