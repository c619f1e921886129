"""logger=mlflow: a run's config as params and its metrics in an MLflow sqlite store, read back with MLflow's client."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY, compose_config
from vit_mnist.training.fit import train

mlflow = pytest.importorskip("mlflow", reason="MLflow is the tracking extra: pip install 'vit-mnist[tracking]'")


def test_mlflow_logger_writes_params_and_metrics_to_the_sqlite_store(data_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (no ./mlruns)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow sets it for the process: not past this test
    logs = tmp_path / "outputs"
    out = logs / "run"
    metrics = train(compose_config(TINY + [f"paths.data_dir={data_dir}", f"paths.log_dir={logs}", "logger=mlflow",
                                           "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                                           "after_fit=search"], out))
    store = logs / "mlflow.db"
    assert store.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("vit_mnist")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["run_folder"] == str(out)
    params = run.data.params
    assert params["model.depth"] == "2" and params["optimizer.lr"] == "0.003" and params["after_fit"] == "search"
    assert params["data.batch_size"] == "32" and params["trainer.max_epochs"] == "2"
    assert run.data.metrics["val/acc_best"] == pytest.approx(metrics["val/acc_best"])
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == 2  # one value per epoch
