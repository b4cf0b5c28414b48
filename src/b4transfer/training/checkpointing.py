"""Fault tolerance: atomic checkpoint files, ``last.ckpt`` every N steps, SIGTERM saves, ``ckpt_path=last``.

- :class:`AtomicCheckpointIO` writes ``<name>.tmp-<pid>`` next to the target, fsyncs it and
  ``os.replace``-s it over the target: a process killed at any point leaves either the old or the new
  file, never a truncated one. (Lightning's default stages the bytes in the system temp directory and
  then *moves* them; when that directory is on another file system, common on clusters, the move is a
  copy that a kill can cut short.)
- :class:`BestCheckpoint` keeps the best-by-metric checkpoint, ``best-epochNNN.ckpt`` with the 1-based
  epoch the console shows ("epoch 10/10" -> ``best-epoch010.ckpt``), optionally weights only.
- :func:`step_checkpoint` is a ``ModelCheckpoint`` that refreshes ``last.ckpt`` every N optimizer steps,
  mid-epoch included, without touching the best-by-metric checkpoint.
- :class:`CheckpointOnSigterm` saves a resumable ``last.ckpt`` when Lightning stops on SIGTERM (SLURM
  pre-emption, ``scancel``, ``kill``); the run then exits with status 143 and says how to resume.
- :func:`find_last_checkpoint` resolves ``ckpt_path=last``: the newest ``checkpoints/last.ckpt``
  under the runs directory; :func:`continue_requeued_job` lets a requeued SLURM job continue its own run.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from b4transfer.errors import UserError, UserFileNotFoundError, UserTypeError
from b4transfer.training.ema import EMA

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a process ended by SIGTERM


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on a local or network file system."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise UserTypeError(
                f"AtomicCheckpointIO.save_checkpoint got storage_options={storage_options!r}; it takes none."
            )
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoint(s) by ``monitor``, named ``best-epochNNN.ckpt`` with ``NNN`` the epoch counted
    from 1, as the per-epoch line and ``summary.json`` count it (Lightning counts from 0).

    ``weights_only``: no optimizer, scheduler or callback state (``checkpoint.best_weights_only``): about a
    quarter of the size with EMA and AdamW; it loads for validate/test/predict/export but cannot resume
    (``last.ckpt`` does). With EMA on, its ``state_dict`` is the averaged weights, as in a full checkpoint.
    """

    def __init__(
        self, dirpath: Path, *, monitor: str, mode: str, save_top_k: int, weights_only: bool = False
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False,
            monitor=monitor,
            mode=mode,
            save_top_k=save_top_k,
            save_weights_only=weights_only,
        )

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key: resuming a run (an older one too) restores its best score and path
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def format_checkpoint_name(self, metrics: dict, filename=None, ver=None, prefix=None) -> str:
        metrics = dict(metrics)
        if "epoch" in metrics:
            metrics["epoch"] = metrics["epoch"] + 1
        return super().format_checkpoint_name(metrics, filename, ver=ver, prefix=prefix)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # a full checkpoint gets the EMA weights from EMA.on_save_checkpoint, which Lightning skips for
        # weights-only saves: swap them into the model for the save instead
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
        swap = ema and self.save_weights_only
        with ema.averaged_weights(trainer.lightning_module) if swap else nullcontext():
            super()._save_checkpoint(trainer, filepath)


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch a checkpoint was saved in, counted from 1 as the console counts (``None`` if unreadable)."""
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:  # a summary line is not worth a failed run
        return None
    return int(epoch) + 1 if isinstance(epoch, int) else None


def best_weights_only(value: Any) -> bool:
    """The checked ``checkpoint.best_weights_only`` (true or false)."""
    if not isinstance(value, bool):
        raise UserError(
            f"checkpoint.best_weights_only must be true or false, got {value!r}. Fix: "
            "checkpoint.best_weights_only=true (best-*.ckpt without optimizer state: smaller, cannot resume) "
            "or =false (full state)."
        )
    return value


def step_checkpoint(dirpath: Path, every_n_train_steps: int | None) -> ModelCheckpoint | None:
    """A ``ModelCheckpoint`` that writes only ``last.ckpt``, every ``every_n_train_steps`` optimizer steps."""
    if every_n_train_steps is None:
        return None
    if (
        isinstance(every_n_train_steps, bool)
        or not isinstance(every_n_train_steps, int)
        or every_n_train_steps < 1
    ):
        raise UserError(
            "checkpoint.every_n_train_steps must be a positive integer or null, "
            f"got {every_n_train_steps!r}. "
            "Fix: e.g. checkpoint.every_n_train_steps=500 (or null for per-epoch last.ckpt only)."
        )
    return ModelCheckpoint(
        dirpath=dirpath,
        monitor=None,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=every_n_train_steps,
    )


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM, write a resumable ``last.ckpt`` (all ranks take part; rank 0 writes it).

    Lightning's own SIGTERM handling stops after the current batch by raising ``SIGTERMException``;
    this callback's ``on_exception`` hook then saves the full training state (model, optimizer,
    scheduler, loop progress), so ``ckpt_path=<that file>`` continues where the run stopped.
    """

    def __init__(self, dirpath: Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.saved: Path | None = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.path)
        self.saved = self.path
        if trainer.is_global_zero:
            log.warning(
                "Received SIGTERM at epoch %d, step %d: saved a resumable checkpoint to %s. "
                "Resume with ckpt_path=%s (or ckpt_path=last).",
                trainer.current_epoch,
                trainer.global_step,
                self.path,
                self.path,
            )


def find_last_checkpoint(runs_root: str | Path, *, exclude: Path | None = None) -> Path:
    """The newest ``**/checkpoints/last.ckpt`` under ``runs_root`` (by modification time).

    Args:
        runs_root: where runs are written (``outputs`` for ``hydra.run.dir=outputs/<date>/<time>``).
        exclude: a run directory to leave out (the one being started).
    """
    root = Path(runs_root)
    found = [
        p for p in root.glob("**/checkpoints/last.ckpt") if exclude is None or p.parents[1] != Path(exclude)
    ]
    if not found:
        raise UserFileNotFoundError(
            f"ckpt_path=last: no checkpoints/last.ckpt under checkpoint.runs_root={str(runs_root)!r} "
            f"({root.resolve()}). Fix: point checkpoint.runs_root at the directory holding your runs "
            "(e.g. checkpoint.runs_root=multirun for sweeps), or pass ckpt_path=<path to last.ckpt>."
        )
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def continue_requeued_job(cfg: DictConfig, ckpt: str | None) -> tuple[DictConfig, str | None]:
    """A requeued SLURM job (``SLURM_RESTART_COUNT`` > 0) whose run directory already holds a
    ``last.ckpt`` continues from it, writing into ``<run dir>/requeue-<n>/`` (nothing is overwritten).

    Returns the config (``run_dir`` moved) and checkpoint to use; unchanged for any other run.
    """
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    run_dir = Path(cfg.run_dir)
    if restarts < 1:
        return cfg, ckpt
    found = [*run_dir.glob("checkpoints/last.ckpt"), *run_dir.glob("requeue-*/checkpoints/last.ckpt")]
    if not found:
        return cfg, ckpt
    latest = max(found, key=lambda p: p.stat().st_mtime_ns)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.run_dir = str(run_dir / f"requeue-{restarts}")
    log.warning("SLURM restart %d of this job: continuing from %s in %s", restarts, latest, cfg.run_dir)
    return cfg, str(latest)
