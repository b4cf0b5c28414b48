"""Experiment trackers: a run with ``logger=mlflow`` read back from its SQLite store (params, metric
history, artefacts), several loggers at once, W&B offline (skipped without wandb), and a missing package
refused in one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer.errors import MissingDependencyError
from b4transfer.modes import run

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("trackers") / "images", per_class=6, size=32)


def _cfg(images: Path, run_dir: Path, *extra: str):
    return compose_cfg(*TINY, "data=folder", f"data.root={images}", "data.image_size=32",
                       "trainer.max_epochs=2", f"run_dir={run_dir}", *extra)


def _only_run(store: Path):
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("b4transfer")
    runs = client.search_runs([experiment.experiment_id])
    return client, runs


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


@pytest.mark.slow
def test_an_mlflow_run_is_read_back_from_its_sqlite_store(images, tmp_path):
    run_dir = tmp_path / "run"
    summary = run(_cfg(images, run_dir, "logger=mlflow"))
    client, runs = _only_run(run_dir)
    assert len(runs) == 1
    found = client.get_run(runs[0].info.run_id)
    params = found.data.params
    assert params["model.name"] == "test_efficientnet" and params["trainer.max_epochs"] == "2"
    assert params["data.root"] == str(images) and params["optim.lr"] == "0.001"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")]
    assert len(steps) == summary["global_step"] and steps == sorted(steps)  # per step (log_every_n_steps=1)
    acc = client.get_metric_history(found.info.run_id, "val/acc1")
    assert len(acc) == 2 and acc[-1].value == pytest.approx(summary["metrics"]["val/acc1"])
    files = _artifacts(client, found.info.run_id)
    assert {"summary.json", "config_resolved.yaml", "confusion_matrix_val.png", "export"} <= files
    assert "export/model.safetensors" in _artifacts(client, found.info.run_id, "export")
    assert found.info.status == "FINISHED" and found.data.tags["b4transfer.run_dir"] == str(run_dir.resolve())


@pytest.mark.slow
def test_csv_mlflow_and_tensorboard_log_together_and_a_store_collects_runs(images, tmp_path):
    store = tmp_path / "store"
    for name in ("a", "b"):
        loggers = ("logger=[csv,mlflow,tensorboard]", f"logger.mlflow.store_dir={store}")
        run(_cfg(images, tmp_path / name, *loggers))
        assert (tmp_path / name / "metrics.csv").is_file()
        assert list((tmp_path / name / "tensorboard").rglob("events.out.tfevents.*"))
        assert not (tmp_path / name / "mlflow.db").exists()
    client, runs = _only_run(store)
    assert sorted(r.info.run_name for r in runs) == [f"{tmp_path.name}/a", f"{tmp_path.name}/b"]
    for r in runs:
        assert client.get_metric_history(r.info.run_id, "val/acc1")
        assert "summary.json" in _artifacts(client, r.info.run_id)


@pytest.mark.slow
def test_wandb_runs_offline(images, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run(_cfg(images, tmp_path / "run", "logger=[csv,wandb]", "seeds=[0,1]"))
    for seed in (0, 1):  # one offline run each (the first was closed): config, metrics, the files artefact
        (found,) = (tmp_path / "run" / f"seed{seed}" / "wandb").glob("offline-run-*/run-*.wandb")
        record = found.read_bytes()  # the run's offline log, what `wandb sync` uploads
        for entry in (b"model.name", b"val/acc1", b"summary.json", b"export/model.safetensors"):
            assert entry in record, entry


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_missing_tracker_package_is_refused_in_one_line(images, tmp_path):
    match = r"logger=wandb needs the wandb package.*b4transfer\[wandb\]"
    with pytest.raises(MissingDependencyError, match=match):
        run(_cfg(images, tmp_path / "run", "logger=wandb"))
    assert not (tmp_path / "run").exists()
