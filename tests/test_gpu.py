"""Checks that need a CUDA GPU: training in both precisions, DDP on 2 GPUs, GPU checkpoints on CPU, the benchmark."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.builders import TINY_BENCH
from tests.conftest import TINY, compose_config, run_module


def _no_gpu_reason() -> str:
    if torch.version.cuda is None:
        return f"needs a CUDA GPU: torch {torch.__version__} is a CPU-only build"
    return f"needs a CUDA GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none"


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=_no_gpu_reason())]



# the tiny model and loader settings, on the GPU
GPU_TINY = [a for a in TINY if not a.startswith("trainer.accelerator=")] + ["trainer.accelerator=gpu"]


def run_on_gpu(module: str, args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    return run_module(module, *args, f"paths.log_dir={cwd / 'outputs'}", cwd=cwd, timeout=600,
                      VIT_MNIST_DATA_DIR=str(data_dir))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fast_dev_run_on_the_gpu(precision: str, data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "fdr"
    result = run_on_gpu("vit_mnist.train", ["debug=fdr", "trainer.accelerator=gpu", f"trainer.precision={precision}",
                                            "data.val_size=100", f"hydra.run.dir={run_dir}"], data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda") and metrics["global_step"] == 1
    assert 0.0 <= metrics["test/acc"] <= 1.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=f"needs 2 GPUs, sees {torch.cuda.device_count()}")
def test_ddp_over_two_gpus(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    # trainer=ddp: NCCL, bf16-mixed, every visible GPU unless trainer.devices says otherwise
    result = run_on_gpu("vit_mnist.train", [*GPU_TINY, "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=2",
                                            "trainer.max_epochs=1", "data.batch_size=16", f"hydra.run.dir={run_dir}"],
                        data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == (700 // 2) // 16  # 700 training images split over 2 processes
    assert metrics["device"] == "cuda:0" and metrics["val/acc_best"] > 0.1


def test_gpu_checkpoint_evaluates_on_the_cpu_alike(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "gpu_run"
    result = run_on_gpu("vit_mnist.train", [*GPU_TINY, "trainer.max_epochs=2", "trainer.precision=32-true",
                                            f"hydra.run.dir={run_dir}"], data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["device"].startswith("cuda")
    eval_dir = tmp_path / "cpu_eval"
    result = run_on_gpu("vit_mnist.evaluate", [f"ckpt_path={trained['best_checkpoint']}", "trainer.accelerator=cpu",
                                               f"hydra.run.dir={eval_dir}"], data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["device"] == "cpu" and evaluated["num_samples"] == 200
    # TF32 on the GPU against fp32 on the CPU may tip one borderline image of the 200, no more
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1 / 200 + 1e-9)


def test_benchmark_on_cuda(tmp_path: Path) -> None:
    from vit_mnist.benchmark.throughput import run

    assert torch.get_float32_matmul_precision() == "high"  # what training runs with
    overrides = [a for a in TINY_BENCH if not a.startswith("device=")] + ["device=cuda", "peers=false"]
    results = run(compose_config(overrides, tmp_path, config_name="bench"))
    [ours] = results["rows"]
    assert ours["train_step"] > 0 and ours["inference"] > 0 and ours["pipeline"] > 0
    assert 0.0 < ours["matmul_share"] < 1.0  # kernels counted once, attention kernels found
