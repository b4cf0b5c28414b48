"""The modes of the command line as Python functions: ``train``, ``validate``, ``test``, ``predict``,
``embed``, ``export``, ``audit``, ``lr_find`` (each returns a :class:`Run`), and ``build`` (the
LightningModule, DataModule and Trainer of a training run, for users who drive Lightning themselves).

Each takes the command line's keys verbatim: ``overrides=["data.root=/data/pets", "trainer.max_epochs=5",
"finetune=gradual"]`` (or a dict ``{"data.root": "/data/pets"}``), composes the config as
``python run.py`` does (:func:`b4transfer.compose.compose_config`), and runs the same mode function
(:func:`b4transfer.modes.run`). A problem the CLI reports in one line (exit status 2) is raised as a
:class:`~b4transfer.errors.UserError` with the same message; a refused run leaves no run directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b4transfer.compose import compose_config, format_override, to_overrides
from b4transfer.errors import UserError

__all__ = ["Run", "audit", "build", "embed", "export", "lr_find", "predict", "run", "test", "train",
           "user_error_of", "validate"]

Overrides = Iterable[str] | Mapping[str, Any] | None


def user_error_of(err: BaseException) -> BaseException | None:
    """The problem a user can fix behind ``err`` (the library's :class:`UserError`, unavailable pretrained
    weights, Lightning's misconfiguration, also when Hydra's ``instantiate`` wrapped one), or ``None``
    for a bug. The command line prints these in one line; the API raises them."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from b4transfer.backbone import PretrainedWeightsUnavailable

    known = (UserError, PretrainedWeightsUnavailable, MisconfigurationException)
    found = err.__cause__ if isinstance(err, InstantiationException) else err
    return found if isinstance(found, known) else None


@dataclass(frozen=True)
class Run:
    """What a run left: its config, ``summary.json`` as a dict, and where it wrote.

    Attributes:
        config: The composed config the run used (``run_dir`` included).
        summary: The run's summary (``summary.json``): metrics, checkpoints, exports, timings.
        run_dir: The run directory.
    """

    config: Any
    summary: dict[str, Any] = field(repr=False)
    run_dir: Path

    @property
    def mode(self) -> str:
        """The mode that ran (``train``, ``validate``, ...)."""
        return str(self.summary.get("mode") or self.config.mode)

    @property
    def metrics(self) -> dict[str, float]:
        """The final metrics (``val/acc1``, ``val/map``, ``test/...``; train: the last epoch's)."""
        return dict(self.summary.get("metrics") or {})

    @property
    def best_checkpoint(self) -> Path | None:
        """The best checkpoint (``checkpoint.monitor``) of a training run, else ``None``."""
        return _path(self.summary.get("best_checkpoint"))

    @property
    def last_checkpoint(self) -> Path | None:
        """``checkpoints/last.ckpt`` of a training run (resumable), when it exists."""
        path = _path(self.summary.get("last_checkpoint"))
        return path if path is not None and path.is_file() else None

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint to use (``b4.load(run.checkpoint)``): the best one, else the last one, else the one
        an evaluation read."""
        return self.best_checkpoint or self.last_checkpoint or _path(self.summary.get("checkpoint"))

    @property
    def export_dir(self) -> Path | None:
        """The export folder (``<run dir>/export``), when the run exported."""
        return _path(self.summary.get("export_dir"))


def _path(value: Any) -> Path | None:
    return Path(value) if value else None


def show_library_logs() -> None:
    """The library's progress lines (data counts, ``Done in ...``, the export) on stderr at INFO, as the CLI
    shows them, unless the application configured logging itself (as Lightning does for its own logger)."""
    import logging

    logger = logging.getLogger("b4transfer")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@contextlib.contextmanager
def _refused_cleanly(run_dir: str) -> Iterator[None]:
    """Within it, a problem the user can fix (:func:`user_error_of`) is raised as itself, and the refused
    run leaves no run directory: what it created goes, while it holds only what the run wrote
    (:mod:`b4transfer.cli.cleanup`). A bug keeps its traceback."""
    from b4transfer.cli.cleanup import forget, remember

    remember(run_dir)
    try:
        yield
    except Exception as err:
        found = user_error_of(err)
        if found is None:
            raise
        if Path(run_dir).is_dir():
            forget(run_dir, {"config_resolved.yaml"})
        raise found from None


def _overrides(mode: str, task: str | None, data: str | None, overrides: Overrides, extra: dict) -> list[str]:
    """The command line of a call: ``mode=``, ``task=``, ``data=`` and the keyword arguments first, so
    that ``overrides`` (the user's own, as typed) can still change anything."""
    head = [f"mode={mode}"] + [format_override(k, v) for k, v in (("task", task), ("data", data)) if v]
    head += [format_override(k, v) for k, v in extra.items() if v is not None]
    return head + to_overrides(overrides)


def run(mode: str, *, task: str | None = None, data: str | None = None, overrides: Overrides = None,
        run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """Run ``mode`` with the command line's keys; the functions below call it.

    Args:
        mode: ``train``, ``validate``, ``test``, ``predict``, ``embed``, ``export``, ``lr_find``, ``audit``.
        task: The ``task=`` group (default: the config's, classification).
        data: The ``data=`` group (``folder``, ``csv``, ``coco``, ...; default: the task's demo set).
        overrides: ``key=value`` strings as on the command line, or a dict ``{"key": value}``.
        run_dir: Where the run writes; default ``outputs/<date>/<time>`` under the working directory.
        **keys: Top-level keys written as keyword arguments (``ckpt_path=...``, ``seed=0``).

    Returns:
        The :class:`Run`.

    Raises:
        UserError: Anything the CLI refuses in one line, with the same message.
    """
    from b4transfer.modes import run as run_mode

    cfg = compose_config(_overrides(mode, task, data, overrides, keys), run_dir=run_dir)
    show_library_logs()
    with _refused_cleanly(cfg.run_dir):
        summary = run_mode(cfg)
    return Run(config=cfg, summary=summary, run_dir=Path(cfg.run_dir))


def train(task: str | None = None, data: str | None = None, overrides: Overrides = None, *,
          run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """Fine-tune (``mode=train``): best + last checkpoints, the export, ``summary.json``.

    Example::

        import b4transfer as b4
        run = b4.train(task="classification", data="folder",
                       overrides=["data.root=/data/pets", "trainer.max_epochs=5"])
        run.metrics["val/acc1"], run.best_checkpoint, run.export_dir

    Args:
        task: The ``task=`` group (one of :func:`b4transfer.tasks.names`).
        data: The ``data=`` group.
        overrides: Any other keys, as on the command line.
        run_dir: Where the run writes (default ``outputs/<date>/<time>``).
        **keys: Top-level keys as keyword arguments (``seed=0``, ``ckpt_path=...`` to resume).
    """
    return run("train", task=task, data=data, overrides=overrides, run_dir=run_dir, **keys)


def validate(ckpt_path: str | os.PathLike, data: str | None = None, overrides: Overrides = None, *,
             task: str | None = None, run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """Metrics of a checkpoint on the validation split (``mode=validate``); ``run.metrics``.

    ``task`` must be the checkpoint's (:meth:`b4transfer.api.model.Model.validate` sets it)."""
    return run("validate", task=task, data=data, overrides=overrides, run_dir=run_dir,
               ckpt_path=ckpt_path, **keys)


def test(ckpt_path: str | os.PathLike, data: str | None = None, overrides: Overrides = None, *,
         task: str | None = None, run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """Metrics of a checkpoint on the test split (``mode=test``)."""
    return run("test", task=task, data=data, overrides=overrides, run_dir=run_dir, ckpt_path=ckpt_path,
               **keys)


test.__test__ = False  # not a pytest test when imported into a test module


def predict(ckpt_path: str | os.PathLike, input: str | os.PathLike, overrides: Overrides = None, *,
            task: str | None = None, run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """``mode=predict``: the task's prediction files for every image of ``input`` in the run directory
    (for objects in memory use ``b4.load(ckpt).predict(images)``)."""
    return run("predict", task=task, overrides=overrides, run_dir=run_dir, ckpt_path=ckpt_path,
               **{"predict.input": input}, **keys)


def embed(input: str | os.PathLike, ckpt_path: str | os.PathLike | None = None, overrides: Overrides = None,
          *, task: str | None = None, run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """``mode=embed``: per-image features (``embeddings.npy``) from a checkpoint or the configured
    backbone."""
    return run("embed", task=task, overrides=overrides, run_dir=run_dir, ckpt_path=ckpt_path,
               **{"predict.input": input}, **keys)


def export(ckpt_path: str | os.PathLike, format: str | Sequence[str] = "timm", overrides: Overrides = None,
           *, task: str | None = None, run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """``mode=export``: the checkpoint in ``format`` (``timm``, ``onnx``, ``openvino``, ``onnx_int8``, or a
    list) in ``run.export_dir``, with its backbone in ``export/backbone/``."""
    fmt = format if isinstance(format, str) else list(format)
    return run("export", task=task, overrides=overrides, run_dir=run_dir, ckpt_path=ckpt_path,
               **{"export.format": fmt}, **keys)


def audit(task: str | None = None, data: str | None = None, overrides: Overrides = None, *,
          run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """``mode=audit``: duplicates, leakage, near-duplicates and likely label errors (``audit.md``)."""
    return run("audit", task=task, data=data, overrides=overrides, run_dir=run_dir, **keys)


def lr_find(task: str | None = None, data: str | None = None, overrides: Overrides = None, *,
            run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
    """``mode=lr_find``: the learning-rate range test (``lr_find.png``, the suggestion in the summary)."""
    return run("lr_find", task=task, data=data, overrides=overrides, run_dir=run_dir, **keys)


def build(task: str | None = None, data: str | None = None, overrides: Overrides = None, *,
          run_dir: str | os.PathLike | None = None, **keys: Any):
    """The LightningModule, DataModule and Trainer of a training run, built and checked as
    ``b4.train`` builds them, not fitted (the run directory is created).

    Example::

        parts = b4.build(task="classification", data="folder", overrides=["data.root=/data/pets"])
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)

    Returns:
        :class:`~b4transfer.modes.train.TrainingParts` (``module``, ``datamodule``, ``trainer``,
        ``splits``, ``cfg``, ``run_dir``, ...).
    """
    from b4transfer.backbone import check_weights
    from b4transfer.config import plain
    from b4transfer.modes.train import setup
    from b4transfer.training.trackers import check_loggers

    cfg = compose_config(_overrides("train", task, data, overrides, keys), run_dir=run_dir)
    with _refused_cleanly(cfg.run_dir):
        check_loggers(cfg.get("logger"))
        check_weights(plain(cfg.model))
        return setup(cfg)
