"""DDP on CPU (trainer=ddp_cpu: 2 processes, gloo): one run folder, files from rank 0 only, exact synced metrics,
sweeps that survive a failing job, a different random stream on every rank."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.strategies.launchers.subprocess_script import (
    _ChildProcessObserver,
)
from torch.utils.data import DistributedSampler

from tests.conftest import TINY, compose_config, run_train_cli
from vit_mnist.data import MNISTDataModule
from vit_mnist.data.samplers import eval_sampler
from vit_mnist.training.distributed import (
    RankSeed,
    config_flags,
    end_rank_processes,
    rank_seed,
    relaunch_argv,
)
from vit_mnist.training.module import ViTClassifier

pytestmark = pytest.mark.xdist_group("ddp")

ROOT = Path(__file__).resolve().parents[1]

# 800 synthetic train images, VAL_SIZE held out: each of the 2 processes trains on 350 (21 batches of 16).
# Odd on purpose: torch's DistributedSampler would pad it (101 -> 2 x 51, one image counted twice); the data
# module's evaluation loaders use vit_mnist.data.samplers.eval_sampler, which never repeats an image.
VAL_SIZE = 101
DDP = [*TINY, "trainer=ddp_cpu", "trainer.max_epochs=2", "data.batch_size=16", f"data.val_size={VAL_SIZE}"]




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
    result = run_train_cli([*DDP, f"hydra.run.dir={run_dir}"], data_dir, tmp_path)
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
    result = run_train_cli(["-m", *DDP, "trainer.max_epochs=1", "test=false", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"],
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


# A config folder outside the package (`--config-dir ... --config-name probe`): its primary config is the training
# config plus a callback that saves, on every rank, what the training augmentation draws for one fixed batch; its
# `case` group holds what each job of the sweep does.
OUTSIDE_CONFIGS = {
    "probe.yaml": "defaults:\n  - train\n  - _self_\n\ncallbacks:\n  rank_probe:\n"
                  "    _target_: tests.rank_probe.RankProbe\n    out_dir: ${paths.output_dir}\n",
    "case/bad_optimizer.yaml": "# @package _global_\noptimizer:\n  weight_decay: -1.0\n",  # fails on both ranks
    "case/rank1_fails.yaml": "# @package _global_\ncallbacks:\n  rank_probe:\n    fail_on_rank: 1\n",
    # trains with outlier exposure (a small pool): each rank draws its own non-digits
    "case/ok.yaml": "# @package _global_\noutlier_exposure:\n  weight: 0.5\n  count: 8\n  batch_size: 4\n",
}


Sweep = tuple[Path, subprocess.CompletedProcess]  # the sweep folder and how the command ended


@pytest.fixture(scope="module")
def failing_sweep(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """A DDP multirun: job 0 fails on both ranks (a negative weight decay), job 1 on rank 1 alone, job 2 trains."""
    cwd = tmp_path_factory.mktemp("ddp_sweep")
    config_dir = cwd / "outside_conf"
    for name, text in OUTSIDE_CONFIGS.items():
        (config_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (config_dir / name).write_text(text)
    sweep_dir = cwd / "sweep"
    result = run_train_cli(["-m", "--config-dir", str(config_dir), "--config-name", "probe", *DDP, "trainer.max_epochs=1",
                      "test=false", "+case=bad_optimizer,rank1_fails,ok", f"hydra.sweep.dir={sweep_dir}"],
                     data_dir, cwd)
    return sweep_dir, result


def test_failing_ddp_jobs_are_recorded_and_the_sweep_goes_on(failing_sweep: Sweep) -> None:
    sweep_dir, result = failing_sweep
    # before: rank 1 exited non-zero, Lightning's observer SIGKILLed the sweep (137) and job 0 lost its folder
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1", "2"):
        assert sorted(p.name for p in (sweep_dir / job / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml",
                                                                                  "overrides.yaml"]
        assert (sweep_dir / job / "train.log").is_file()
    failed = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "Invalid weight_decay value: -1.0" in failed["error"]
    # rank 1 failing alone: rank 0 fails at its next collective; rank 1's own reason is in the job's log
    assert json.loads((sweep_dir / "1" / "metrics.json").read_text())["status"] == "failed"
    assert "rank 1: job failed" in (sweep_dir / "1" / "train.log").read_text()
    assert "rank 1 fails alone" in (sweep_dir / "1" / "train.log").read_text()
    assert json.loads((sweep_dir / "2" / "metrics.json").read_text())["global_step"] == 21
    assert_rank_zero_files(sweep_dir / "2")
    summary = (sweep_dir / "sweep_summary.md").read_text()
    assert "3 jobs: 1 ok, 2 failed, 0 incomplete" in summary
    assert "- job 0 (failed, `+case=bad_optimizer`): " in summary and "Invalid weight_decay value: -1.0" in summary
    assert "- job 1 (failed, `+case=rank1_fails`): " in summary


def test_every_rank_composes_the_config_of_config_dir_and_config_name(failing_sweep: Sweep) -> None:
    sweep_dir, _ = failing_sweep
    # the probe callback exists only in the outside primary config: rank 1 ran it, so it composed that config
    assert sorted(p.name for p in (sweep_dir / "2").glob("rank_probe_*.pt")) == ["rank_probe_0.pt", "rank_probe_1.pt"]


def test_ranks_draw_different_augmentation(failing_sweep: Sweep) -> None:
    sweep_dir, _ = failing_sweep
    drawn = [torch.load(sweep_dir / "2" / f"rank_probe_{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert drawn[0].shape == (8, 1, 28, 28)
    assert not torch.equal(drawn[0][0], drawn[0][1])  # the images of a batch are warped differently...
    for i in range(8):  # ...and so is image i on the two ranks (before: the same rotation, shift and zoom)
        assert not torch.allclose(drawn[0][i], drawn[1][i]), i


def test_ranks_draw_their_own_outliers_from_one_pool(failing_sweep: Sweep) -> None:
    sweep_dir, _ = failing_sweep
    drawn = [torch.load(sweep_dir / "2" / f"rank_outliers_{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert torch.equal(drawn[0]["pool"], drawn[1]["pool"]) and len(drawn[0]["pool"]) == 5 * 8  # the same pool
    assert drawn[0]["batch"].shape == (4, 1, 28, 28) and drawn[0]["batch"].is_floating_point()  # transformed
    assert not torch.allclose(drawn[0]["batch"], drawn[1]["batch"])  # each rank its own draw


def test_rank_seed_gives_every_rank_its_own_reproducible_stream() -> None:
    class FakeTrainer:
        def __init__(self, rank: int, world_size: int) -> None:
            self.global_rank, self.world_size = rank, world_size

    def draws(rank: int, world_size: int, seed: int = 42) -> torch.Tensor:
        torch.manual_seed(seed)  # as seed_everything leaves every rank
        RankSeed(seed).setup(FakeTrainer(rank, world_size), None, "fit")
        return torch.rand(6)

    assert not torch.equal(draws(0, 2), draws(1, 2))
    assert torch.equal(draws(1, 2), draws(1, 2))  # reproducible for a seed and world size
    assert not torch.equal(draws(1, 2, seed=42), draws(1, 2, seed=43))
    torch.manual_seed(42)
    seeded = torch.rand(6)
    assert torch.equal(draws(0, 1), seeded)  # one process: the stream of its seed, as before
    # mixed, not added: rank 1 of seed 42 does not draw what rank 0 of seed 43 draws
    assert rank_seed(42, 1) != rank_seed(43, 0) and rank_seed(42, 0) != 42


def test_config_flags_are_kept_for_the_other_ranks() -> None:
    argv = ["-m", "--config-dir", "/x/conf", "-cn=probe", "model.depth=2", "--config-path=conf", "-cd", "rel",
            "--config-name", "train", "-cp", "p", "seed=1,2"]
    assert config_flags(argv) == ["--config-dir", "/x/conf", "-cn=probe", "--config-path=conf", "-cd", "rel",
                                  "--config-name", "train", "-cp", "p"]
    assert config_flags(["model.depth=2", "-m"]) == []
    hydra_overrides = ["hydra.mode=MULTIRUN", "hydra.sweep.dir=/s", "hydra.searchpath=[file:///x/more]"]
    assert relaunch_argv(["train.py", "-m", "-cd", "/x/conf", "seed=1,2"], ["seed=1"], hydra_overrides) == [
        "train.py", "-cd", "/x/conf", "hydra.searchpath=[file:///x/more]", "seed=1", "hydra.mode=RUN"]


def test_rank_processes_are_ended_without_lightning_killing_this_process() -> None:
    # Lightning's observer SIGKILLs its "main" process when a watched one exits non-zero: here main is a stand-in
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    observer = _ChildProcessObserver(main_pid=stand_in.pid, child_processes=[hung], sleep_period=0.05)
    observer.start()
    try:
        started = time.monotonic()
        end_rank_processes({observer}, timeout=0.5)
        assert hung.poll() is not None and time.monotonic() - started < 10  # stopped after the timeout
        observer.join(timeout=5)
        assert not observer.is_alive() and stand_in.poll() is None  # the observer ended without killing anyone
    finally:
        for proc in (hung, stand_in):
            proc.kill()
            proc.wait()


def test_ddp_trainer_uses_every_visible_gpu(tmp_path: Path) -> None:
    cfg = compose_config(["trainer=ddp"], tmp_path)
    assert cfg.trainer.devices == "auto"  # not a fixed 4 that fails on 2 GPUs
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DDPStrategy"
