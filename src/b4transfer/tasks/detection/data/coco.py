"""Detection's COCO reader (``data=coco``): the instances files found or named by
:func:`~b4transfer.data.coco.coco_files`, read by the shared :func:`~b4transfer.data.coco.read_coco`,
assembled into :class:`~b4transfer.tasks.detection.data.splits.DetectionSplits` (see
:mod:`b4transfer.data.coco` for the layouts and checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from b4transfer.data.coco import coco_files, read_coco
from b4transfer.data.splits import SplitOptions
from b4transfer.tasks.detection.data.splits import DetectionSplits, assemble_detection_splits


def coco_splits(
    root: str | Path | None = None,
    *,
    train_json: str | Path | None = None,
    train_images: str | Path | None = None,
    val_json: str | Path | None = None,
    val_images: str | Path | None = None,
    test_json: str | Path | None = None,
    test_images: str | Path | None = None,
    **split: Any,
) -> DetectionSplits:
    """Read a COCO dataset: the standard layout under ``root`` and/or explicit per-split files.

    Args:
        root: Dataset root with ``annotations/instances_<split>*.json`` and image folders.
        train_json: Training instances JSON (overrides the one found under ``root``).
        train_images: Folder the training ``file_name`` entries are relative to.
        val_json: Validation instances JSON; none: a seeded ``val_fraction`` of train.
        val_images: Folder of the validation images.
        test_json: Test instances JSON (optional).
        test_images: Folder of the test images.
        **split: The :class:`~b4transfer.data.splits.SplitOptions`: ``val_fraction`` (share of training
            images held out when there is no validation file), ``seed`` (of that split) and ``on_bad_image``
            (``"skip"``: count and warn, or ``"error"`` for unreadable images).

    Returns:
        The dataset splits; labels follow the training file's categories sorted by id.
    """
    options = SplitOptions(**split)
    files = coco_files(root, train=(train_json, train_images), val=(val_json, val_images),
                       test=(test_json, test_images))
    names, ids, train, cleaner = read_coco(*files["train"], key="data.train_json")
    tagged, counts = {"train": train}, list(cleaner.report())
    for split in ("val", "test"):
        if split in files:
            _, _, samples, cleaner = read_coco(
                *files[split], categories=(names, ids), key=f"data.{split}_json"
            )
            tagged[split] = samples
            counts = [a + b for a, b in zip(counts, cleaner.report())]
    return assemble_detection_splits(
        names, ids, tagged, source=files["train"][0], options=options, box_counts=(counts[0], counts[1])
    )
