"""Small helpers that read the composed config: plain containers, loader workers."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from b4transfer import devices


def plain(node: Any) -> Any:
    """``node`` as plain Python containers (resolved), or unchanged if it is not a config node."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def num_workers(cfg: DictConfig) -> int:
    """``data.num_workers``, or the default share of this process's CPUs."""
    if cfg.data.get("num_workers") is not None:
        return int(cfg.data.num_workers)
    return devices.default_num_workers(cfg.trainer.get("devices"))
