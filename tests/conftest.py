"""Shared fixtures: synthetic IDX datasets and composed Hydra configs that write into a temporary folder."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tests.synthetic import write_dataset
from vit_mnist.runtime.paths import CONFIG_DIR

# The cores shared out between pytest-xdist's workers (`make test` runs one per core): most of a test's time is one
# thread (imports, Hydra, a subprocess's start), so two workers on two cores finish in about half the time.
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

ROOT = Path(__file__).resolve().parents[1]

# Small settings that keep a training run to seconds on 2 CPU cores.
TINY = [
    "model.hidden_dim=32",
    "model.depth=2",
    "model.heads=2",
    "model.mlp_dim=64",
    "optimizer.lr=3e-3",
    "data.batch_size=32",
    "data.eval_batch_size=100",
    "data.val_size=100",
    "data.download=false",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
]


# TINY without its ViT shape, and a narrow CNN: a 2-epoch run takes seconds on 2 CPU cores.
CNN_TINY = [o for o in TINY if not o.startswith("model.")] + ["model=cnn", "model.widths=[16,32]"]

_RUNS: dict[tuple[str, ...], tuple[Path, dict]] = {}


def trained_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, *overrides: str,
                base: tuple[str, ...] | list[str] = tuple(TINY)) -> tuple[Path, dict]:
    """(run folder, metrics) of a tiny training run on the synthetic data, `base` (TINY) + `overrides`: trained once
    per test session for the same overrides and shared by every test module that asks (read-only: a test that
    changes a file of the run copies it first)."""
    from vit_mnist.training.fit import train

    key = (*base, *overrides)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp("shared_run")
        _RUNS[key] = out, train(compose_config([*base, f"paths.data_dir={data_dir}", *overrides], out))
    return _RUNS[key]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run in a subprocess: this checkout first on PYTHONPATH, the caller's PYTHONPATH kept
    after it (where `make gpu-check` puts the wheels a bare GPU machine lacks), and `extra` on top."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in a subprocess from `cwd` with `subprocess_env(PYTHONWARNINGS="ignore", **env)`:
    the one way the tests run a command line (this checkout first on the path: configs may name test callbacks)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                          env=subprocess_env(**{"PYTHONWARNINGS": "ignore", **env}), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def run_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                   ) -> Callable[..., subprocess.CompletedProcess]:
    """`run_in_process(module, *args, cwd=..., **env)`: the command line `python -m <module> <args>` run by the entry's
    own Hydra main in this process, as a CompletedProcess (exit code, stdout, stderr). For the paths that end early
    (a user's mistake, refused settings), without the seconds a new interpreter takes to import torch and Lightning;
    `run_module` runs the command in a real subprocess."""

    def run(module: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
        main = importlib.import_module(module).main
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [f"{module.replace('.', '/')}.py", *args])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        GlobalHydra.instance().clear()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level  # Hydra configures logging for its run: undone after it
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            GlobalHydra.instance().clear()
            for handler in root.handlers:
                if handler not in handlers:  # e.g. the run's log file, whose folder a refused run removed
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([module, *args], code, out, err)

    return run


def run_train_cli(args: Sequence[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m vit_mnist.train` on the synthetic data, its logs under `cwd`/outputs."""
    return run_module("vit_mnist.train", *args, f"paths.data_dir={data_dir}", f"paths.log_dir={cwd / 'outputs'}",
                      cwd=cwd)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated images (paths.cache_dir) cached for this session only, never in the checkout's .cache/; runs in
    subprocesses inherit it."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["VIT_MNIST_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST as raw IDX and Fashion-MNIST as gzip IDX, 800 train / 200 test images each."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "mnist", gz=False)
    write_dataset(root, "fashion_mnist", gz=True, seed=1)
    return root


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose `conf/<config_name>.yaml` with overrides, as the CLI would, with its run folder at `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


REAL_DATA_DIR = Path(os.environ.get("VIT_MNIST_DATA_DIR", ROOT / "data"))


@pytest.fixture(scope="session")
def real_mnist_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The metrics of the quick recipe trained briefly on the real MNIST (150 steps of 128 images, outlier exposure
    at its weight with 300 non-digits a set: the recipe's 5,000 take ~10 s to make), tested and calibrated: one run a
    session for the slow tests that need a real model (in the xdist group "real_mnist", so `make test`'s workers
    never train it twice). Skips without the real data."""
    if not (REAL_DATA_DIR / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data not found in {REAL_DATA_DIR / 'MNIST' / 'raw'}; set VIT_MNIST_DATA_DIR")
    from vit_mnist.training.fit import train

    cfg = compose_config([f"paths.data_dir={REAL_DATA_DIR}", "experiment=fast", "data.download=false",
                          "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=150",
                          "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "logger=csv", "tta=false",
                          "outlier_exposure.count=300"], tmp_path_factory.mktemp("real_mnist_run"))
    return train(cfg)


# `make test` runs pytest-xdist's workers with --dist loadgroup: a module whose module-scoped fixtures train or
# sweep names itself an xdist group (`pytestmark`), so that one worker builds them once, not each worker.
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests (the real data's, the longest) first: spread over `make test`'s workers from the start, none
    is left running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def make_cfg(data_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """`make_cfg(*overrides, output_dir=None)`: a tiny training config on the synthetic data."""

    def make(*overrides: str, output_dir: Path | None = None, config_name: str = "train") -> DictConfig:
        base = TINY + [f"paths.data_dir={data_dir}"] if config_name == "train" else [f"paths.data_dir={data_dir}"]
        return compose_config(base + list(overrides), output_dir or tmp_path / "run", config_name)

    return make
