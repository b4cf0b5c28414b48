"""Detection samples and splits, and the box checks every detection reader shares.

A reader (COCO, YOLO, the generated demo) turns its source into :class:`DetectionSample` lists
(boxes as ``xyxy`` pixels of the original image, contiguous labels ``0..K-1``) and calls
:func:`assemble_detection_splits`, which drops unreadable images (skipped and counted, as for
classification) and carves a seeded validation split when the source has none.

Boxes are cleaned where they are read (:class:`BoxCleaner`): a box reaching outside its image is
clipped to it, one with no area left (non-positive width or height) is dropped; both are counted
and reported in one warning per source file. Images with no boxes stay in as negatives.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from b4transfer.data.splits import check_on_bad_image, check_val_fraction, drop_unreadable, shown
from b4transfer.errors import UserError

log = logging.getLogger(__name__)



@dataclass
class DetectionSample:
    """One image and its boxes.

    Args:
        path: Image file.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` in pixels of the (upright) original image.
        labels: ``(N,)`` int64 contiguous class indices.
        iscrowd: ``(N,)`` int64, 1 for COCO crowd regions (ignored by training, honoured by evaluation).
        image_id: The source's image id (COCO ``id``; YOLO: position in the sorted file list, from 1).
        size: ``(width, height)`` of the original image.
    """

    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    image_id: int
    size: tuple[int, int]

    @property
    def num_boxes(self) -> int:
        """Number of boxes (0 for a negative image)."""
        return len(self.labels)


def make_sample(
    path: Path, boxes, labels, iscrowd=None, *, image_id: int, size: tuple[int, int]
) -> DetectionSample:
    """A :class:`DetectionSample` with arrays of the right dtypes and shapes (also for zero boxes)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    crowd = np.zeros(len(labels), np.int64) if iscrowd is None else np.asarray(iscrowd, np.int64).reshape(-1)
    assert len(boxes) == len(labels) == len(crowd), (boxes.shape, labels.shape, crowd.shape)
    return DetectionSample(Path(path), boxes, labels, crowd, int(image_id), (int(size[0]), int(size[1])))


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


class BoxCleaner:
    """Clip boxes to their image and drop degenerate ones, counting both for one warning per source.

    Args:
        source: The annotation file (or folder) the boxes come from, for the warning.
    """

    def __init__(self, source: str | Path) -> None:
        self.source = source
        self.clipped = 0
        self.dropped: list[str] = []  # where each dropped box came from, e.g. "annotation id 7"

    def __call__(self, boxes: np.ndarray, size: tuple[int, int], where: list[str]) -> np.ndarray:
        """Clean ``(N, 4)`` xyxy boxes of an image of ``size=(width, height)``.

        Args:
            boxes: Boxes in pixels.
            size: The image's ``(width, height)``.
            where: One description per box (annotation id, file and line) for the warning.

        Returns:
            The boolean mask of boxes kept; ``boxes`` is clipped in place.
        """
        width, height = size
        finite = np.isfinite(boxes).all(axis=1)
        clipped = boxes.copy()
        clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
        clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
        keep = finite & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        changed = keep & (np.abs(clipped - boxes) > 1e-6).any(axis=1)
        self.clipped += int(changed.sum())
        self.dropped += [w for w, k in zip(where, keep) if not k]
        boxes[:] = np.where(finite[:, None], clipped, 0)
        return keep

    def report(self) -> tuple[int, int]:
        """Log one warning if anything was clipped or dropped; return ``(clipped, dropped)``."""
        if self.clipped or self.dropped:
            listed = shown(self.dropped, ", ")
            log.warning(
                "%s: clipped %d box(es) reaching outside their image and dropped %d with no area inside "
                "it (non-positive width/height)%s. HINT: fix those annotations if they are mistakes; "
                "images left with no boxes are kept as negatives.",
                self.source,
                self.clipped,
                len(self.dropped),
                f" ({listed})" if self.dropped else "",
            )
        return self.clipped, len(self.dropped)


def random_val_split(
    samples: list[DetectionSample], *, val_fraction: float, seed: int
) -> tuple[list[DetectionSample], list[DetectionSample]]:
    """Hold out a seeded ``val_fraction`` of the images (at least one, never all), order kept."""
    check_val_fraction(val_fraction)
    if len(samples) < 2:
        return list(samples), []
    n_val = min(max(round(len(samples) * val_fraction), 1), len(samples) - 1)
    val_idx = set(random.Random(seed).sample(range(len(samples)), n_val))
    return (
        [s for i, s in enumerate(samples) if i not in val_idx],
        [s for i, s in enumerate(samples) if i in val_idx],
    )


def assemble_detection_splits(
    class_names: list[str],
    category_ids: list[int],
    tagged: dict[str, list[DetectionSample]],
    *,
    source: str | Path,
    val_fraction: float,
    seed: int,
    on_bad_image: str,
    box_counts: tuple[int, int] = (0, 0),
) -> DetectionSplits:
    """Drop unreadable images, then split train into train/val when no val was given.

    Args:
        class_names: Class names, in label order.
        category_ids: Source id of each class.
        tagged: Samples under ``"train"``, ``"val"``, ``"test"`` (any may be missing).
        source: Dataset root or file, for messages.
        val_fraction: Used only when ``tagged`` has no val samples.
        seed: Seed of that split.
        on_bad_image: ``"skip"`` or ``"error"``, see :func:`~b4transfer.data.splits.drop_unreadable`.
        box_counts: ``(clipped, dropped)`` boxes, from the readers' :class:`BoxCleaner` reports.

    Returns:
        The assembled splits.
    """
    if not class_names:
        raise UserError(
            f"{source}: no classes found. Fix: list at least one category (COCO 'categories', YOLO "
            "'names' in data.yaml or classes.txt)."
        )
    check_val_fraction(val_fraction)
    check_on_bad_image(on_bad_image)
    names = ("train", "val", "test")
    everything = [s for name in names for s in tagged.get(name, [])]
    good, skipped = drop_unreadable(everything, on_bad_image=on_bad_image)
    good_ids = {id(s) for s in good}
    parts = {name: [s for s in tagged.get(name, []) if id(s) in good_ids] for name in names}
    if not parts["train"]:
        raise UserError(
            f"{source}: the training split holds no readable images. Fix: point data.root (or "
            "data.train_json / data.train_images) at a dataset with training images."
        )
    if not parts["val"]:
        log.info(
            "%s: no validation split given; holding out %.0f%% of the training images (seed %d).",
            source,
            100 * val_fraction,
            seed,
        )
        parts["train"], parts["val"] = random_val_split(parts["train"], val_fraction=val_fraction, seed=seed)
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
