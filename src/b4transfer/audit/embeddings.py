"""Pooled backbone embeddings of image files, for the near-duplicate and label-error searches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from b4transfer.backbone import create_backbone, resolve_data_configs
from b4transfer.config import num_workers, plain
from b4transfer.data.dataset import PathDataset
from b4transfer.data.transforms import build_transforms, draft_size_for

__all__ = ["DATA_KEYS", "device_for", "pooled_embeddings", "run_embedder"]

DATA_KEYS = ("image_size", "eval_image_size", "crop_pct", "eval_crop_pct", "interpolation", "mean", "std")


def device_for(trainer: Mapping[str, Any] | None) -> str:
    """``cuda`` when a GPU is there and ``trainer.accelerator`` allows it, else ``cpu``."""
    accelerator = (trainer or {}).get("accelerator", "auto")
    return "cuda" if torch.cuda.is_available() and accelerator in ("gpu", "cuda", "auto") else "cpu"


@torch.no_grad()
def pooled_embeddings(
    paths: Sequence[Path],
    *,
    model: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """``(N, C)`` pooled features of the configured backbone (``model`` as ``cfg.model``: its weights,
    pretrained or not), each image resized and centre-cropped as the model's eval transform does.

    Args:
        paths: Image files.
        model: ``name``, ``pretrained``, ``weights``.
        data: Overrides of the model's data config (``image_size``, ``mean``, ...; see ``DATA_KEYS``).
        batch_size: Images per forward pass.
        num_workers: DataLoader workers.
        device: Where the backbone runs.
    """
    backbone = (
        create_backbone(
            model["name"], pretrained=bool(model.get("pretrained", False)), weights=model.get("weights")
        )
        .to(device)
        .eval()
    )
    overrides = {k: v for k, v in (data or {}).items() if k in DATA_KEYS and v is not None}
    train_cfg, eval_cfg = resolve_data_configs(backbone, **overrides)
    _, eval_tf = build_transforms(train_cfg=train_cfg, eval_cfg=eval_cfg)
    dataset = PathDataset(paths, transform=eval_tf, draft_size=draft_size_for(eval_cfg))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks = [backbone(x.to(device)).float().cpu() for x, _ in loader]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, backbone.num_features), np.float32)


def run_embedder(cfg: DictConfig, data: Mapping[str, Any]) -> Callable[[Sequence[Path]], np.ndarray]:
    """:func:`pooled_embeddings` of the run's ``model`` with the given ``data`` settings, at the run's
    ``data.batch_size`` and workers, on the device ``trainer`` allows: the audit's ``embed``."""
    return partial(
        pooled_embeddings,
        model=plain(cfg.model),
        data=data,
        batch_size=int(cfg.data.batch_size),
        num_workers=num_workers(cfg),
        device=device_for(plain(cfg.trainer)),
    )
