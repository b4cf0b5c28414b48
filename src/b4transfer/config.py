"""Small helpers that read the composed config: plain containers, loader workers, seeds."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from b4transfer import devices
from b4transfer.errors import UserError

# The seeds Lightning's seed_everything takes (numpy's: an unsigned 32-bit integer)
SEED_RANGE = (0, 2**32 - 1)


def plain(node: Any) -> Any:
    """``node`` as plain Python containers (resolved), or unchanged if it is not a config node."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def num_workers(cfg: DictConfig) -> int:
    """``data.num_workers``, or the default share of this process's CPUs."""
    if cfg.data.get("num_workers") is not None:
        return int(cfg.data.num_workers)
    return devices.default_num_workers(cfg.trainer.get("devices"))


def is_seed(value: Any) -> bool:
    """Whether ``lightning.seed_everything`` takes ``value`` as it is: a whole number in ``SEED_RANGE``."""
    low, high = SEED_RANGE
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def check_seed(value: Any) -> None:
    """Refuse a ``seed`` that ``lightning.seed_everything`` would reject (``None`` lets Lightning choose)."""
    if value is not None and not is_seed(value):
        raise UserError(
            f"seed={value!r} is not a seed: a seed is a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]} "
            "(2**32 - 1). Fix: e.g. seed=42."
        )
