"""Experiment trackers: ``logger=mlflow``, ``logger=wandb``, or several (``logger=[csv,mlflow,tensorboard]``).

Thin wrappers over Lightning's ``MLFlowLogger`` / ``WandbLogger`` (which log the per-step metrics and the
module's hyper-parameters) that add what a tracked run needs:

* MLflow stores into a real tracking store, by default a local SQLite database
  ``sqlite:///<run dir>/mlflow.db`` with artefacts in ``<run dir>/mlartifacts/`` (``store_dir`` collects
  many runs in one store; ``tracking_uri`` points at a server);
* W&B runs offline by default (``WANDB_MODE=offline``; ``wandb sync <run dir>/wandb/offline-run-*`` uploads);
* the resolved config goes to every tracker as params (dotted keys, ``model.name``), and after the run
  its files -- ``summary.json``, ``config_resolved.yaml``, the PNGs (confusion matrix), the other
  top-level files and ``export/`` -- as artefacts.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from omegaconf import OmegaConf

from b4transfer.errors import MissingDependencyError, UserError

# wrapper -> (module it needs, the option, the b4transfer extra)
_NEEDS = {
    "mlflow_logger": ("mlflow", "logger=mlflow", "mlflow"),
    "wandb_logger": ("wandb", "logger=wandb", "wandb"),
}


def _require(module: str, option: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"{option} needs the {module} package, which is not installed. Fix: pip install "
            f"\"b4transfer[{extra}]\" (or pip install {module}), or choose another logger (logger=csv)."
        )


def check_loggers(spec: Any) -> None:
    """Refuse, before any work, a configured tracker whose package is missing, and an MLflow store that
    cannot be used (a store path that is a file, a tracking server that does not answer)."""
    for key, node in (spec or {}).items():
        target = str((node or {}).get("_target_", ""))
        if target.startswith(__name__ + ".") and target.rsplit(".", 1)[-1] in _NEEDS:
            _require(*_NEEDS[target.rsplit(".", 1)[-1]])
        if target == f"{__name__}.mlflow_logger":
            check_mlflow_store(node, key=f"logger.{key}")


def _blocking_file(path: Path) -> Path | None:
    """``path`` or the first of its parents that exists as something other than a directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _store_dirs(node: Any, key: str) -> list[tuple[str, str, Path, str]]:
    """The directories an MLflow logger config writes into: ``(key, value, directory, how to fix)``."""
    dirs = []
    if node.get("store_dir"):
        value = str(node.store_dir)
        dirs.append((f"{key}.store_dir", value, Path(value), "a directory (it is created if missing)"))
    uri, name = str(node.get("tracking_uri") or ""), f"{key}.tracking_uri"
    if uri.startswith("sqlite:///"):  # SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db
        dirs.append((name, uri, Path(uri[len("sqlite:///"):]).parent, "a database in a directory, e.g. "
                     f"{name}=sqlite:///mlruns/mlflow.db"))
    elif uri.startswith("file:"):
        dirs.append((name, uri, Path(urllib.parse.urlparse(uri).path), "a directory"))
    return dirs


def check_mlflow_store(node: Any, *, key: str = "logger.mlflow") -> None:
    """Refuse an MLflow store whose directory is a file, and a tracking server that does not answer
    within ``SERVER_TIMEOUT_S`` (MLflow itself would retry for minutes)."""
    for name, value, directory, fix in _store_dirs(node, key):
        blocking = _blocking_file(directory.expanduser().resolve())
        if blocking is not None:
            raise UserError(
                f"{name}={value} cannot hold the MLflow store: {blocking} is a file, not a directory. "
                f"Fix: point {name} at {fix}, or move that file away."
            )
    uri = str(node.get("tracking_uri") or "")
    if uri.startswith(("http://", "https://")):
        _check_server(uri, key=f"{key}.tracking_uri")


SERVER_TIMEOUT_S = 5.0


def _check_server(uri: str, *, key: str) -> None:
    """Ask the tracking server's ``/health``; any HTTP answer counts as reachable."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy, an older server without /health): MLflow takes it from here
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"{key}={uri} does not answer ({reason}; waited up to {SERVER_TIMEOUT_S:g} s). Fix: start the "
            "MLflow server (mlflow server --host 127.0.0.1 --port 5000), correct the URI, or log locally "
            "with tracking_uri=null (a SQLite store in the run directory) or logger=csv."
        ) from None


def build_loggers(spec: Any) -> list[Logger]:
    """The ``logger`` config group's loggers (a user error inside one comes out as itself)."""
    check_loggers(spec)
    loggers = []
    for node in (spec or {}).values():
        if node is None:
            continue
        try:
            loggers.append(instantiate(node))
        except InstantiationException as err:
            if isinstance(err.__cause__, UserError):
                raise err.__cause__ from None
            raise
    return loggers


def _run_name(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name else run_dir.name


def mlflow_logger(
    *, run_dir: str, store_dir: str | None = None, tracking_uri: str | None = None,
    experiment_name: str = "b4transfer", run_name: str | None = None,
) -> MLFlowLogger:
    """Lightning's ``MLFlowLogger`` on ``sqlite:///<store_dir or run_dir>/mlflow.db`` unless ``tracking_uri``
    says otherwise; artefacts of a new experiment go to ``<store_dir>/mlartifacts/``."""
    _require(*_NEEDS["mlflow_logger"])
    store = Path(store_dir or run_dir).expanduser().resolve()
    store.mkdir(parents=True, exist_ok=True)
    local = tracking_uri is None or str(tracking_uri).startswith("sqlite:")
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name or _run_name(Path(run_dir)),
        tracking_uri=tracking_uri or f"sqlite:///{store / 'mlflow.db'}",
        artifact_location=str(store / "mlartifacts") if local else None,
        tags={"b4transfer.run_dir": str(Path(run_dir).resolve())},
    )


def wandb_logger(
    *, run_dir: str, project: str = "b4transfer", name: str | None = None, offline: bool = True, **kwargs: Any
) -> WandbLogger:
    """Lightning's ``WandbLogger`` saving under ``run_dir``; ``offline`` (default): ``WANDB_MODE=offline``."""
    _require(*_NEEDS["wandb_logger"])
    if offline:
        os.environ["WANDB_MODE"] = "offline"
    return WandbLogger(project=project, name=name or _run_name(Path(run_dir)), save_dir=str(run_dir),
                       offline=offline, **kwargs)


def _trackers(trainer: L.Trainer) -> list[Logger]:
    return [lg for lg in trainer.loggers if isinstance(lg, (MLFlowLogger, WandbLogger))]


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"model.name": ..., "optim.lr": ...}`` (lists as their text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class ConfigParams(L.Callback):
    """Log the resolved config as params to every tracker (MLflow, W&B) when a run starts."""

    def __init__(self, config: Any) -> None:
        self.config = config  # a DictConfig, resolved only when a tracker is there to take it

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        trackers = _trackers(trainer)
        params = flat_params(OmegaConf.to_container(self.config, resolve=True)) if trackers else {}
        for tracker in trackers:
            tracker.log_hyperparams(params)


def finish_trackers(trainer: L.Trainer, run_dir: Path) -> None:
    """After a run: give every tracker the run's files -- the top-level ones (``summary.json``,
    ``config_resolved.yaml``, PNGs such as the confusion matrix, audit, log) and ``export/`` -- and close
    the W&B run (Lightning leaves it open: the next run of the process, a k-fold or seed run, joins it)."""
    trackers = _trackers(trainer) if trainer.is_global_zero else []
    files = [f for f in sorted(run_dir.iterdir()) if f.is_file() and not f.name.startswith("mlflow.db")]
    export = run_dir / "export"
    for tracker in trackers:
        if isinstance(tracker, MLFlowLogger):
            for f in files:
                tracker.experiment.log_artifact(tracker.run_id, str(f))
            if export.is_dir():
                tracker.experiment.log_artifacts(tracker.run_id, str(export), "export")
        else:
            import wandb

            artifact = wandb.Artifact(f"run-files-{tracker.experiment.id}", type="run-files")
            for f in files:
                artifact.add_file(str(f))
            if export.is_dir():
                artifact.add_dir(str(export), name="export")
            tracker.experiment.log_artifact(artifact)
            tracker.experiment.finish()
