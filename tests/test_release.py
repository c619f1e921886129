"""Release checks: the wheel ships its configs and web assets and runs from any folder; the `vit-mnist` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from hydra.core.global_hydra import GlobalHydra

import vit_mnist
from tests.conftest import subprocess_env
from vit_mnist import cli
from vit_mnist.runtime.paths import CONFIG_DIR, PROJECT_ROOT, find_checkout

pytestmark = pytest.mark.xdist_group("release")

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path, pattern: str) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.glob(pattern) if "__pycache__" not in p.parts}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed into with `pip install --target`, without dependencies)."""
    tmp = tmp_path_factory.mktemp("release")
    # Build from a copy: an in-tree build would write build/ and egg-info into the shared checkout.
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("conf", "vit_mnist", "hydra_plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp / "dist").glob("vit_mnist-*.whl")
    target = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    return wheel, target


def test_wheel_holds_every_config_module_and_web_asset(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = _files(ROOT / "conf", "**/*.yaml")
    assert {"train.yaml", "paths/default.yaml", "model/cnn.yaml", "hydra/launcher/slurm.yaml"} <= yamls
    assert {f"vit_mnist/conf/{y}" for y in yamls} <= names
    web = _files(ROOT / "vit_mnist" / "web", "*")
    assert {"index.html", "app.js", "style.css"} <= web
    assert {f"vit_mnist/web/{w}" for w in web} <= names
    # every module, subpackages included: pyproject.toml lists the packages by hand
    assert {f"vit_mnist/{m}" for m in _files(ROOT / "vit_mnist", "**/*.py")} <= names
    assert "hydra_plugins/vit_mnist_launcher/__init__.py" in names  # Hydra finds the submitit launchers there
    # the Optuna sweeper's plugin shell, where Hydra's plugin scan finds it (and no hydra_plugins/__init__.py, which
    # would hide every other plugin)
    assert "hydra_plugins/vit_mnist_sweeper/optuna_sweeper.py" in names and "hydra_plugins/__init__.py" not in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "vit-mnist = vit_mnist.cli:main" in entry_points and "vit-mnist-train = vit_mnist.train:main" in entry_points


def test_installed_copy_runs_from_an_empty_folder_and_writes_only_there(
    installed: tuple[Path, Path], data_dir: Path, tmp_path: Path
) -> None:
    _, target = installed
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "VIT_MNIST_ROOT"}
    # bytecode is the interpreter's cache, not the project writing: keep it out of the comparison
    env.update(PYTHONPATH=str(target), VIT_MNIST_DATA_DIR=str(data_dir), PYTHONDONTWRITEBYTECODE="1",
               PYTHONWARNINGS="ignore")
    before = _snapshot(target)

    def run(*command: str) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    probe = run(sys.executable, "-c", "import vit_mnist, vit_mnist.runtime.paths as c; "
                "print(vit_mnist.__file__, c.CONFIG_DIR, c.PROJECT_ROOT, vit_mnist.__version__, sep='\\n')")
    module_file, config_dir, project_root, version = probe.stdout.split("\n")[:4]
    assert Path(module_file).parent == target / "vit_mnist"  # the installed copy, not the checkout
    assert Path(config_dir) == target / "vit_mnist" / "conf" and project_root == "None"
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

    shown = run(str(target / "bin" / "vit-mnist"), "train", "--cfg", "job", "--resolve", "--package", "paths")
    assert f"log_dir: {work}/outputs" in shown.stdout and f"data_dir: {data_dir}" in shown.stdout

    run(sys.executable, "-m", "vit_mnist.train", "debug=fdr", "data.val_size=100", "data.download=false")
    runs = list(work.glob("outputs/debug/*/*/.hydra/config.yaml"))
    assert len(runs) == 1, sorted(str(p) for p in work.rglob("*"))
    assert (runs[0].parents[1] / "debug.log").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]  # no data/, lightning_logs/ or other strays
    assert _snapshot(target) == before  # nothing written next to the installed package


def test_checkout_finds_its_own_conf_and_root() -> None:
    # an editable install or PYTHONPATH=<checkout>: configs are read (and runs written) where the checkout is
    assert PROJECT_ROOT == ROOT and CONFIG_DIR == ROOT / "conf"


def test_find_checkout_needs_pyproject_and_conf(tmp_path: Path) -> None:
    package = tmp_path / "vit_mnist"
    package.mkdir()
    assert find_checkout(package) is None  # site-packages or a --target folder
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.yaml").write_text("{}\n")
    assert find_checkout(package) is None
    (tmp_path / "pyproject.toml").write_text("")
    assert find_checkout(package) == tmp_path


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    assert vit_mnist.__version__ == version("vit-mnist")


def test_help_lists_every_command_with_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "vit_mnist.cli", "--help"], capture_output=True, text=True,
                            timeout=120, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for command in ("train", "evaluate", "calibrate", "robustness", "predict", "export", "serve", "bench",
                    "sweep-report"):
        (line,) = [x for x in lines if x.split()[:1] == [command]]
        assert len(line.split()) > 3  # a description follows the name
    assert set(cli.COMMANDS) == {"train", "evaluate", "calibrate", "robustness", "predict", "export", "serve",
                                 "bench", "sweep-report"}


def test_no_command_and_a_misspelt_one_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2 and "usage: vit-mnist <command>" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["evalute", "ckpt_path=x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Did you mean `vit-mnist evaluate`?" in err and "Traceback" not in err


@pytest.fixture
def keep_logging():
    """Hydra configures logging when a command runs in this process (and disables loggers that exist then): put
    it back, so the tests after this one still see their log records."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {name: (lg.disabled, lg.level, list(lg.handlers), lg.propagate)
               for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in logging.Logger.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.disabled, lg.level, lg.handlers[:], lg.propagate = loggers.get(name, (False, logging.NOTSET, [], True))


@pytest.mark.parametrize("command", ["train", "evaluate", "robustness", "predict", "export", "serve", "bench"])
def test_each_hydra_command_shows_hydras_help(command: str, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, keep_logging: None) -> None:
    monkeypatch.setattr(sys, "argv", ["vit-mnist", command, "--help"])
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr().out
    assert e.value.code in (0, None)
    # the job is named after the module, as under `python -m vit_mnist.<command>`
    assert f"{command} is powered by Hydra" in out and "== Config ==" in out
    assert sys.argv[1:] == ["--help"]  # the command's own arguments, without the command


def test_sweep_report_help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["vit-mnist"])
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep-report", "--help"])
    assert e.value.code == 0 and "sweep_dir" in capsys.readouterr().out
