"""Data sources usable as ``data.source._target_``: functions returning :class:`DatasetSplits`."""

from __future__ import annotations

from pathlib import Path

from b4transfer.data.demo import ensure_demo
from b4transfer.data.folder import scan_folder
from b4transfer.data.splits import DatasetSplits


def demo_splits(root: str | Path | None = None, *, seed: int = 0) -> DatasetSplits:
    """The generated demo set (written once to a cache dir), read through the folder loader."""
    return scan_folder(ensure_demo(root, seed=seed))
