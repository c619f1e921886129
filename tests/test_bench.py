"""The benchmark command runs on a tiny setting and prints its table (it is a command, not a test of speed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config
from vit_mnist.bench import check_options, matmul_share, print_table, run
from vit_mnist.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY_BENCH = ["model.hidden_dim=32", "model.depth=1", "model.heads=2", "model.mlp_dim=64", "batch_sizes=[8]",
              "steps=2", "warmup=1", "repeats=1", "matmul_size=128", "device=cpu"]
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def test_bench_measures_ours_and_the_hugging_face_peers(tmp_path: Path, capsys) -> None:
    results = run(compose_config(TINY_BENCH, tmp_path, config_name="bench"))
    rows = {r["model"]: r for r in results["rows"]}
    ours = rows["ours"]
    assert results["matmul_gflops"] > 0 and results["threads"] >= 1
    assert ours["batch"] == 8 and ours["train_step"] > 0 and ours["inference"] > 0 and ours["pipeline"] > 0
    # forward + backward is about 3 forwards; the forward of 17 tokens (CLS + 4x4 patches of 7x7) at width 32:
    blocks = 2 * 17 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32)  # qkv, attention output, MLP
    attention = 2 * (2 * 17 * 17 * 32)  # q @ k and weights @ v: counted on the CPU kernel too
    forward = blocks + attention + 2 * 16 * 49 * 32 + 2 * 32 * 10  # + patch projection and head
    assert ours["train_mflop"] * 1e6 == pytest.approx(3 * forward, rel=0.05)
    assert 0.0 < ours["matmul_share"] < 1.0
    if HAS_TRANSFORMERS:
        same = rows["HF ViT, same shape"]
        # the same shape: the same parameters and, within the head's share, the same FLOPs
        assert same["params"] == ours["params"]
        assert same["train_mflop"] == pytest.approx(ours["train_mflop"], rel=0.05)
        assert rows["HF ViT, the note's (MLP 3072)"]["params"] > 3_000_000
        assert same["pipeline"] is None and same["train_step"] > 0
    print_table(results)
    out = capsys.readouterr().out
    assert "ours" in out and "GFLOP/s" in out and ("HF ViT, same shape" in out) == HAS_TRANSFORMERS


def test_matmul_share_tells_matrix_products_from_other_work() -> None:
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    assert matmul_share(lambda i: a @ b, 3, torch.device("cpu")) > 0.9
    assert matmul_share(lambda i: torch.tanh(a).exp(), 3, torch.device("cpu")) == 0.0


def test_bench_options_are_checked(tmp_path: Path) -> None:
    for bad, named in (("batch_sizes=[0]", "batch_sizes"), ("steps=0", "steps"), ("precision=fp8", "precision"),
                       ("profile_steps=-1", "profile_steps")):
        with pytest.raises(UserError, match=named):
            check_options(compose_config(TINY_BENCH + [bad], tmp_path, config_name="bench"))


def test_bench_command_prints_its_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vit_mnist.bench", *TINY_BENCH, "peers=false", f"output={tmp_path / 'bench.json'}"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Throughput on cpu" in result.stdout and "full pipeline" in result.stdout
    assert (tmp_path / "bench.json").is_file() and not (tmp_path / "outputs").exists()
