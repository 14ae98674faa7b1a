"""logger=mlflow: real runs, read back through MLflow's client (params, metric history, tags, artifacts)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import compose_config, require, run_train

from lightfit.run.loggers import flat_params

require("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402 - after the skip


def only_run(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lightfit").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def epoch_rows(run_dir) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [row for row in csv.DictReader(f) if row.get("val/acc")]


# The explicit loop logs through the logger objects itself; the Lightning loops through the Trainer.
@pytest.mark.parametrize("loop", ["automatic", "explicit"])
def test_a_run_in_mlflow_and_metrics_csv(tmp_path, monkeypatch, loop):
    monkeypatch.chdir(tmp_path)  # the run is named after its run directory, from here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"loop={loop}", "debug=limit", "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={uri}"]
    overrides.append(f"logger.log_model={loop == 'explicit'}")  # the short form of logger.mlflow.log_model
    results = run_train(tmp_path / "run", *overrides)
    client, run = only_run(uri)

    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["loop"], tags["task"], tags["run_dir"]) == (loop, "classification", str(tmp_path / "run"))
    params = run.data.params
    assert params["optimizer.lr"] == "0.001" and params["loop.name"] == loop and params["seed"] == "0"
    assert params["trainer.limit_train_batches"] == "5" and "model._partial_" not in params
    config = compose_config(*overrides, run_dir=tmp_path / "run")
    assert params == {key: str(value) for key, value in flat_params(config).items()}

    # One value per epoch under the metrics.csv names, at the same steps, with the same values.
    rows = epoch_rows(tmp_path / "run")
    for name in ("val/acc", "val/loss"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [(m.step, m.value) for m in history] == [(int(r["step"]), float(r[name])) for r in rows]
    assert len(rows) == 2 and run.data.metrics["val/acc"] == pytest.approx(float(rows[-1]["val/acc"]))
    assert max(float(r["val/acc"]) for r in rows) == pytest.approx(results["val/acc"])

    # The best checkpoint only when asked for (logger.log_model=true), and only that one.
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    if loop == "explicit":
        assert artifacts == ["checkpoints/best.ckpt"]
        local = client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(tmp_path))
        assert Path(local).read_bytes() == (tmp_path / "run" / "checkpoints" / "best.ckpt").read_bytes()
    else:
        assert artifacts == []


def test_default_store_is_mlflow_db_in_the_folder_you_train_from(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_config("logger=mlflow", run_dir=tmp_path / "run")
    from hydra.core.hydra_config import HydraConfig

    cwd = HydraConfig.get().runtime.cwd
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{cwd}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert (
        compose_config("logger=mlflow", run_dir=tmp_path).logger.mlflow.tracking_uri
        == "http://localhost:5000"
    )
