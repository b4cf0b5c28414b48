"""Small Lightning callbacks: training throughput for the run summary (and the wall time at each
epoch end, ``time/elapsed_s``), the progress report (a bar that refreshes every ``log_every_n_steps``
steps on a terminal, one plain line per epoch in batch jobs)."""

from __future__ import annotations

import os
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


def progress_bar(refresh_rate: int) -> L.Callback:
    """On a terminal, Lightning's default progress bar (rich if installed, else tqdm), refreshed every
    ``refresh_rate`` steps; when stdout is not a terminal (SLURM, nohup, CI), :class:`EpochLines`.

    Each refresh reads the logged metrics (``train/loss``, ``train/acc1``) as Python numbers, which on
    a GPU is a host-device synchronisation; Lightning's default refreshes every step. Refreshing at
    the logging interval keeps the GPU queue full between refreshes (BENCHMARKS.md, training overhead).
    """
    if not stdout_is_terminal():
        return EpochLines()
    rate = max(1, int(refresh_rate))
    return RichProgressBar(refresh_rate=rate) if _RICH_AVAILABLE else TQDMProgressBar(refresh_rate=rate)


def stdout_is_terminal() -> bool:
    """Whether stdout is an interactive terminal (not a file, a pipe, SLURM's or nohup's log)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


class EpochLines(ProgressBar):
    """The progress report for batch jobs: one plain line per training epoch on stdout (rank zero).

    ``epoch 3/10  train/loss 0.512 train/acc1 0.81  val/loss 0.43 val/acc1 0.85  412.3 img/s  ETA 02:15``:
    the metrics the task shows in the progress bar (``prog_bar=True``), training images/s over the
    epoch's training batches, and the time left at the mean epoch wall time (validation included) so far.
    A training metric is the epoch's mean where the task logs one (``train/loss_epoch``, see
    :meth:`~b4transfer.tasks.base.TaskModule.log_train`), not its last batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_start = self._train_end = 0.0
        self._images = 0
        self._epoch_seconds: list[float] = []

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._train_end = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[0]) * trainer.world_size  # a tensor, or a list of detection images
        self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_seconds.append(time.perf_counter() - self._epoch_start)
        if self._enabled and trainer.is_global_zero:
            print(self.line(trainer), flush=True)

    def line(self, trainer) -> str:
        """The line of the epoch that just ended."""
        means = trainer.callback_metrics
        metrics = {
            k: float(means[f"{k}_epoch"]) if f"{k}_epoch" in means else v
            for k, v in trainer.progress_bar_metrics.items()
            if isinstance(v, (int, float))
        }
        group = {k: k.split("/")[0] if k.startswith(("train/", "val/")) else "other" for k in metrics}
        groups = [[f"{k} {metrics[k]:.4g}" for k in sorted(metrics) if group[k] == g]
                  for g in ("train", "val", "other")]
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = [f"epoch {trainer.current_epoch + 1}" + (f"/{total}" if total else "")]
        parts += [" ".join(g) for g in groups if g]
        seconds = self._train_end - self._epoch_start
        if self._images and seconds > 0:
            parts.append(f"{self._images / seconds:.1f} img/s")
        if total:
            left = (total - trainer.current_epoch - 1) * sum(self._epoch_seconds) / len(self._epoch_seconds)
            parts.append(f"ETA {_clock(left)}")
        return "  ".join(parts)


def _clock(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour on)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


_IMPORTED = time.perf_counter()


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (imports, data scan, model creation included): from
    ``/proc`` on Linux; elsewhere since this module was imported."""
    try:
        with open("/proc/self/stat") as f:  # field 22, starttime, in clock ticks after boot
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED


class ThroughputMeter(L.Callback):
    """Counts training images and the wall time spent in training epochs (validation excluded).

    ``images_per_s`` is global (all ranks) and includes data loading, so it is what a user waits for.
    At the end of each training epoch (after its validation and checkpoint writes) it logs
    ``time/elapsed_s``, the wall seconds since the process started (:func:`seconds_since_process_start`):
    how long the run took to get that far (``benchmarks/bench_time_to_accuracy.py`` reads it).
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start: float | None = None

    def _pause(self) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[0]) * trainer.world_size  # a tensor, or a list of detection images

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.training and not trainer.sanity_checking:
            self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._pause()
        pl_module.log("time/elapsed_s", seconds_since_process_start(), rank_zero_only=True)

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None
