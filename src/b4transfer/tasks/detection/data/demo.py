"""A generated, deterministic detection demo set in COCO format: shapes with boxes on textured backgrounds.

``ensure_demo_detection()`` writes once (atomically, ``.complete`` marker last)::

    root/annotations/instances_train.json   root/train/000000.png ...
    root/annotations/instances_val.json     root/val/000000.png ...

the standard COCO layout, read back by :func:`b4transfer.tasks.detection.data.coco.coco_splits` like users'
data. Each image (size varies between ``image_size`` and 1.4x that, not always square) holds 0 to 4
non-overlapping shapes — circle, square, triangle — in a class-typical hue family, with random
size, position, rotation and colour jitter; about one image in ten holds none (a negative). Boxes
are the tight boxes of the drawn shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from b4transfer.data.demo import DemoSet, class_colour, noisy_image, paint, random_canvas, shape_coverage

DEMO_DETECTION_CLASSES = ("circle", "square", "triangle")
DEMO_DETECTION_VERSION = "v1"
_OBJECTS = (0, 1, 2, 3, 4)
_OBJECT_P = (0.1, 0.3, 0.3, 0.2, 0.1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def render_detection_image(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, list, list]:
    """Draw one demo image.

    Args:
        rng: Source of all randomness.
        image_size: The smaller possible side; sides vary up to 1.4x this.

    Returns:
        ``(image, boxes, labels)``: boxes as ``[x, y, w, h]`` pixels (COCO), labels as class indices.
    """
    width, height, pixels = random_canvas(rng, image_size, 1.4)
    boxes, labels = [], []
    for _ in range(rng.choice(_OBJECTS, p=_OBJECT_P)):
        cls = int(rng.integers(len(DEMO_DETECTION_CLASSES)))
        for _attempt in range(20):
            r = image_size * rng.uniform(0.08, 0.2)
            cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
            mask = shape_coverage(
                DEMO_DETECTION_CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * np.pi), width, height
            )
            ys, xs = np.nonzero(mask >= 0.5)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
            if all(_iou(box, b) < 0.1 for b in boxes):
                break
        else:
            continue  # no free spot: fewer objects
        pixels = paint(pixels, class_colour(rng, cls, len(DEMO_DETECTION_CLASSES)), mask)
        boxes.append(box)
        labels.append(cls)
    coco_boxes = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]
    return noisy_image(rng, pixels), coco_boxes, labels


def _write_split(folder: Path, split: str, rngs: Iterator[np.random.Generator], image_size: int) -> None:
    """``<split>/000000.png ...`` and ``annotations/instances_<split>.json``."""
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for i, rng in enumerate(rngs):
        image, boxes, labels = render_detection_image(rng, image_size)
        file_name = f"{i:06d}.png"
        image.save(folder / split / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": image.width, "height": image.height})
        for box, label in zip(boxes, labels):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(DEMO_DETECTION_CLASSES)
    ]
    (folder / "annotations").mkdir(exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(data) + "\n")


DETECTION_DEMO = DemoSet(
    name="demo-detection",
    version=DEMO_DETECTION_VERSION,
    classes=DEMO_DETECTION_CLASSES,
    defaults={"image_size": 160, "train_images": 320, "val_images": 64, "seed": 0},
    min_image_size=64,
    write_split=_write_split,
)


def ensure_demo_detection(root: str | Path | None = None, **sizes: int) -> Path:
    """The detection demo set, generated once (deterministically) in the standard COCO layout: see
    :meth:`~b4transfer.data.demo.DemoSet.ensure` of :data:`DETECTION_DEMO` (``image_size`` is the smallest
    image side, sides vary up to 1.4x; ``root=None``: the cache folder ``demo-detection-v1-...``)."""
    return DETECTION_DEMO.ensure(root, **sizes)


def demo_detection_splits(root: str | Path | None = None, **sizes: int):
    """The generated detection demo (written once to a cache dir, ``sizes`` as for
    :func:`ensure_demo_detection`), read through the COCO loader."""
    from b4transfer.tasks.detection.data.coco import coco_splits

    return coco_splits(ensure_demo_detection(root, **sizes))
