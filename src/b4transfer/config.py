"""Small helpers that read the composed config: plain containers, loader workers, seeds, and the
shipped defaults (:func:`conf_default`: what a Python caller gets when it passes no value)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from b4transfer.errors import UserError
from b4transfer.settings.keys import config_dir

# The seeds Lightning's seed_everything takes (numpy's: an unsigned 32-bit integer)
SEED_RANGE = (0, 2**32 - 1)


def plain(node: Any) -> Any:
    """``node`` as plain Python containers (resolved), or unchanged if it is not a config node."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def num_workers(cfg: DictConfig) -> int:
    """``data.num_workers``, or the default share of this process's CPUs."""
    from b4transfer.training import (
        devices,  # torch: not for the CLI's start (b4transfer.cli.entry imports config_dir)
    )

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


def loader_settings(cfg: DictConfig) -> dict[str, Any]:
    """What every task's datamodule takes from ``cfg``: ``batch_size``, ``num_workers``, ``augment`` and
    ``pin_memory`` (on a CUDA accelerator)."""
    import torch

    on_gpu = torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto")
    return {
        "batch_size": int(cfg.data.batch_size),
        "num_workers": num_workers(cfg),
        "augment": plain(cfg.data.get("augment")),
        "pin_memory": on_gpu,
    }


@functools.cache
def _conf_file(name: str) -> DictConfig:
    return OmegaConf.load(Path(config_dir()) / name)


def conf_default(key: str, file: str = "config.yaml") -> Any:
    """The default of the dotted ``key`` as ``conf/<file>`` writes it (e.g. ``export.onnx_opset``), so
    that a library function's default is the command line's, written once, in the YAML."""
    value = OmegaConf.select(_conf_file(file), key, throw_on_missing=True)
    if value is None:
        raise KeyError(f"conf/{file} has no default for {key}")
    return plain(value)
