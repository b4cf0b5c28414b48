"""Small Lightning callbacks: training throughput for the run summary."""

from __future__ import annotations

import time

import lightning as L


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
