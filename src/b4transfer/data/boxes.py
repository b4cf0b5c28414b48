"""Box samples and the box checks every box reader shares (the COCO JSON parser, YOLO, generated sets).

A reader turns its source into :class:`DetectionSample` lists (boxes as ``xyxy`` pixels of the original
image, contiguous labels ``0..K-1``, built with :func:`make_sample`). Boxes are cleaned where they are read
(:class:`BoxCleaner`): a box reaching outside its image is clipped to it, one with no area left
(non-positive width or height) is dropped; both are counted and reported in one warning per source file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from b4transfer.data.splits import shown

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
