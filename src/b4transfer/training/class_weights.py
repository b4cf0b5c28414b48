"""``loss.class_weights`` checked before any work, for every task that takes it.

A value is ``null``, the name of a weighting the task computes from the training data (``auto``; for
classification also ``effective``), or one finite number ``>= 0`` per class, not all zero. An infinite
or NaN weight turns the weighted cross-entropy into ``inf / inf`` (NaN: nothing learns); a string that
is no weighting (``"1,2"``, ``[1, x]``) is a typo. Both are refused here, naming the value and the fix;
the count against the classes is checked once the data is read.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from b4transfer.errors import UserError

__all__ = ["check_class_weights"]


def check_class_weights(spec: Any, weightings: tuple[str, ...]) -> str | list[float] | None:
    """``spec`` as ``None``, one of ``weightings``, or a list of floats; else a one-line :class:`UserError`.

    Args:
        spec: The ``loss.class_weights`` value (plain or a config node).
        weightings: The weighting names the task accepts (e.g. ``("auto", "effective")``).
    """
    if isinstance(spec, (ListConfig, DictConfig)):
        spec = OmegaConf.to_container(spec, resolve=True)
    if spec is None or (isinstance(spec, str) and spec in weightings):
        return spec
    fix = (
        f"Fix: loss.class_weights={' or '.join(weightings)} (computed from the training data), a list of "
        "one finite number >= 0 per class in class order (e.g. loss.class_weights=[1.0,3.0]), or null."
    )
    if isinstance(spec, str):
        raise UserError(f"loss.class_weights={spec} is not a weighting; use {' or '.join(weightings)}. {fix}")
    if not isinstance(spec, (list, tuple)):
        raise UserError(f"loss.class_weights={spec!r} is neither a weighting nor a list of weights. {fix}")
    bad = [
        w
        for w in spec
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0
    ]
    if bad:
        raise UserError(
            f"loss.class_weights={spec!r} holds {bad!r}: each weight must be a finite number >= 0 (an "
            f"infinite or NaN weight makes the loss NaN and nothing learns). {fix}"
        )
    if not any(spec):
        raise UserError(f"loss.class_weights={spec!r}: all weights are 0, so nothing would be learned. {fix}")
    return [float(w) for w in spec]
