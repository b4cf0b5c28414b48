"""Checks and helpers every task's data module shares: integer settings, the lone last batch, the
letterbox fill colour."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from b4transfer.errors import UserError


def check_int(value: Any, key: str, low: int, fix: str) -> None:
    """Refuse ``value`` for ``key`` unless it is an integer >= ``low`` (``fix`` says what to set)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}. Fix: {fix}.")


def lone_last_batch(num_samples: int, batch_size: int) -> bool:
    """Whether an epoch would end with a batch of one image: training drops it (BatchNorm in train mode
    cannot normalise a single value per channel, e.g. a 1x1 map of one image), one image per epoch."""
    return batch_size > 1 and num_samples > batch_size and num_samples % batch_size == 1


def fill_colour(mean: Sequence[float]) -> tuple[int, int, int]:
    """The normalisation mean as 0..255 RGB: padding that normalises to zero."""
    return tuple(int(round(255 * float(m))) for m in mean)
