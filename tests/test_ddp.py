"""DDP on CPU (trainer=ddp_cpu: 2 processes, gloo): one run folder, files from rank 0 only, exact synced metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from torch.utils.data import DistributedSampler

from tests.conftest import TINY
from vit_mnist.data import MNISTDataModule
from vit_mnist.distributed import eval_sampler
from vit_mnist.module import ViTClassifier

# 800 synthetic train images, VAL_SIZE held out: each of the 2 processes trains on 350 (21 batches of 16).
# Odd on purpose: torch's DistributedSampler would pad it (101 -> 2 x 51, one image counted twice); the data
# module's evaluation loaders use vit_mnist.distributed.eval_sampler, which never repeats an image.
VAL_SIZE = 101
DDP = [*TINY, "trainer=ddp_cpu", "trainer.max_epochs=2", "data.batch_size=16", f"data.val_size={VAL_SIZE}"]


def run_cli(args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "vit_mnist.train", *args, f"paths.data_dir={data_dir}",
                           f"paths.log_dir={cwd / 'outputs'}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def single_process_scores(checkpoint: str, data_dir: Path, test: bool = True) -> tuple[float, float | None]:
    """val/acc and test/acc (if `test`) of a checkpoint evaluated by one process on the same splits."""
    model = ViTClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    datamodule = MNISTDataModule(data_dir=str(data_dir), val_size=VAL_SIZE, eval_batch_size=100, download=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    [val] = trainer.validate(model, datamodule=datamodule, verbose=False)
    if not test:
        return val["val/acc"], None
    [tested] = trainer.test(model, datamodule=datamodule, verbose=False)
    return val["val/acc"], tested["test/acc"]


def assert_rank_zero_files(run_dir: Path) -> None:
    """Checkpoints, TensorBoard events and metrics written once, by one process."""
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    writers = {p.name.split(".")[-2] for p in (run_dir / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 1  # event file names end in <host>.<pid>.<n>: one pid
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]


def test_ddp_cpu_run_matches_a_single_process_evaluation(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli([*DDP, f"hydra.run.dir={run_dir}"], data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one folder for the run, none per rank
    assert_rank_zero_files(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2 * 21  # 2 epochs of 350 images per process: the data was split in two
    assert metrics["val/acc_best"] > 0.2  # it learned (chance is 0.1)
    val_acc, test_acc = single_process_scores(metrics["best_checkpoint"], data_dir)
    assert val_acc == pytest.approx(metrics["val/acc_best"], abs=1e-6)
    assert test_acc == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_ddp_cpu_in_a_multirun_gives_each_job_its_processes_and_folder(data_dir: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    # the second job must start its own second process, not wait for the first job's
    result = run_cli(["-m", *DDP, "trainer.max_epochs=1", "test=false", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"],
                     data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    assert result.stdout.count("Launching 2 jobs") + result.stderr.count("Launching 2 jobs") == 1  # one sweep
    for job in ("0", "1"):
        assert_rank_zero_files(sweep_dir / job)
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert metrics["global_step"] == 21  # both jobs split the data over 2 processes
    val_acc, _ = single_process_scores(metrics["best_checkpoint"], data_dir, test=False)
    assert val_acc == pytest.approx(metrics["val/acc_best"], abs=1e-6)
    assert "2 jobs: 2 ok" in (sweep_dir / "sweep_summary.md").read_text()


@pytest.mark.parametrize("size", [101, 7])
def test_eval_sampler_gives_every_item_to_exactly_one_rank(size: int) -> None:
    class FakeTrainer:
        world_size = 2

        def __init__(self, rank: int) -> None:
            self.global_rank = rank

    dataset = list(range(size))
    shards = [list(eval_sampler(dataset, FakeTrainer(rank))) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == dataset  # no item twice, none left out
    # a DistributedSampler already: Lightning keeps it instead of adding its padded one
    assert isinstance(eval_sampler(dataset, FakeTrainer(0)), DistributedSampler)
    assert eval_sampler(dataset, None) is None
