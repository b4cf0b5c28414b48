"""Detection splits: what every detection reader (COCO, YOLO, the generated demo) hands the data module.

A reader turns its source into :class:`~b4transfer.data.boxes.DetectionSample` lists (boxes cleaned by
:class:`~b4transfer.data.boxes.BoxCleaner`) and calls :func:`assemble_detection_splits`, which drops
unreadable images (skipped and counted, as for classification) and carves a seeded validation split when
the source has none. Images with no boxes stay in as negatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from b4transfer.data.boxes import DetectionSample
from b4transfer.data.splits import SplitOptions, hold_out_val, readable_parts, shown
from b4transfer.errors import UserError

log = logging.getLogger(__name__)



@dataclass
class DetectionSplits:
    """Everything a detection data module needs.

    Args:
        class_names: Class names; label ``i`` means ``class_names[i]``.
        category_ids: The source's id of each class (COCO ``category_id``; YOLO: the class index),
            used to write COCO results JSON.
        train: Training samples.
        val: Validation samples.
        test: Test samples (may be empty).
        skipped: ``(path, reason)`` for every unreadable image left out.
        clipped_boxes: Boxes clipped to their image while reading.
        dropped_boxes: Degenerate boxes (no area inside the image) dropped while reading.
    """

    class_names: list[str]
    category_ids: list[int]
    train: list[DetectionSample]
    val: list[DetectionSample]
    test: list[DetectionSample] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    clipped_boxes: int = 0
    dropped_boxes: int = 0

    multi_label = False

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


def assemble_detection_splits(
    class_names: list[str],
    category_ids: list[int],
    tagged: dict[str, list[DetectionSample]],
    *,
    source: str | Path,
    options: SplitOptions,
    box_counts: tuple[int, int] = (0, 0),
) -> DetectionSplits:
    """Drop unreadable images, then split train into train/val when no val was given.

    Args:
        class_names: Class names, in label order.
        category_ids: Source id of each class.
        tagged: Samples under ``"train"``, ``"val"``, ``"test"`` (any may be missing).
        source: Dataset root or file, for messages.
        options: The hold-out (of random images) and the unreadable-image policy.
        box_counts: ``(clipped, dropped)`` boxes, from the readers' :class:`BoxCleaner` reports.

    Returns:
        The assembled splits.
    """
    if not class_names:
        raise UserError(
            f"{source}: no classes found. Fix: list at least one category (COCO 'categories', YOLO "
            "'names' in data.yaml or classes.txt)."
        )
    parts, skipped = readable_parts(tagged, options)
    if not parts["train"]:
        raise UserError(
            f"{source}: the training split holds no readable images. Fix: point data.root (or "
            "data.train_json / data.train_images) at a dataset with training images."
        )
    hold_out_val(parts, options, source=source, of="the training images")
    counts = np.bincount(
        np.concatenate([s.labels for s in parts["train"]] or [np.zeros(0, np.int64)]),
        minlength=len(class_names),
    )
    empty = [f"{name} (id {cid})" for name, cid, n in zip(class_names, category_ids, counts) if not n]
    if empty:
        log.warning(
            "%s: %d of %d categories have no training annotations: %s; the model can never learn them (a "
            "Roboflow export's parent category, listed without boxes, is one of these and harmless).",
            source,
            len(empty),
            len(class_names),
            shown(empty, ", "),
        )
    return DetectionSplits(
        list(class_names),
        [int(i) for i in category_ids],
        parts["train"],
        parts["val"],
        parts["test"],
        skipped,
        clipped_boxes=box_counts[0],
        dropped_boxes=box_counts[1],
    )
