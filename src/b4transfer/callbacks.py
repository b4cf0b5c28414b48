"""Small Lightning callbacks: training throughput for the run summary, a progress bar that refreshes
every ``log_every_n_steps`` steps."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


def progress_bar(refresh_rate: int) -> L.Callback:
    """Lightning's default progress bar (rich if installed, else tqdm), refreshed every ``refresh_rate``
    steps.

    Each refresh reads the logged metrics (``train/loss``, ``train/acc1``) as Python numbers, which on
    a GPU is a host-device synchronisation; Lightning's default refreshes every step. Refreshing at
    the logging interval keeps the GPU queue full between refreshes (BENCHMARKS.md, training overhead).
    """
    rate = max(1, int(refresh_rate))
    return RichProgressBar(refresh_rate=rate) if _RICH_AVAILABLE else TQDMProgressBar(refresh_rate=rate)


class ThroughputMeter(L.Callback):
    """Counts training images and the wall time spent in training epochs (validation excluded).

    ``images_per_s`` is global (all ranks) and includes data loading, so it is what a user waits for.
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

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None
