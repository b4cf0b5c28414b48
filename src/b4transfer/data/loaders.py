"""Checks and helpers every task's data module shares: integer settings, the lone last batch, the
letterbox fill colour."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
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


def check_flip_scale_jitter(
    augment: Mapping[str, Any] | None, defaults: Mapping[str, Any], *, kind: str, scale_example: str
) -> dict[str, Any]:
    """``data.augment`` of the dense tasks (``hflip``, ``scale``, ``color_jitter``) over ``defaults``,
    checked: each wrong value named with its fix (``kind`` names the data in the unknown-key message,
    ``scale_example`` is the scale range the fix suggests)."""
    aug = dict(defaults if augment is None else augment)
    unknown = sorted(set(aug) - set(defaults))
    if unknown:
        raise UserError(f"data.augment has unknown key(s) {unknown} for {kind}. Fix: use {sorted(defaults)}.")
    aug = {**defaults, **aug}
    if not isinstance(aug["hflip"], numbers.Real) or not 0 <= aug["hflip"] <= 1:
        raise UserError(f"data.augment.hflip must be a probability in [0, 1], got {aug['hflip']!r}.")
    scale = aug["scale"]
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise UserError(
            f"data.augment.scale must be [low, high] with 0 < low <= high, got {scale!r}. "
            f"Fix: e.g. data.augment.scale={scale_example}, or [1.0,1.0] for no scale jitter."
        )
    if not isinstance(aug["color_jitter"], numbers.Real) or aug["color_jitter"] < 0:
        raise UserError(f"data.augment.color_jitter must be >= 0, got {aug['color_jitter']!r}.")
    aug["scale"] = (float(scale[0]), float(scale[1]))
    return aug
