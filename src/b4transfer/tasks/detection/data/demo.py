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
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from b4transfer.data.demo import (
    cache_root,
    check_int_args,
    ensure_generated,
    hsv255,
    shape_polygon,
    textured_background,
)

DEMO_DETECTION_CLASSES = ("circle", "square", "triangle")
DEMO_DETECTION_VERSION = "v1"
_SUPERSAMPLE = 2
_OBJECTS = (0, 1, 2, 3, 4)
_OBJECT_P = (0.1, 0.3, 0.3, 0.2, 0.1)


def default_demo_detection_root(image_size: int, train_images: int, val_images: int, seed: int) -> Path:
    """:func:`~b4transfer.data.demo.cache_root` / ``demo-detection-v1-<size>-<n>-<n>-<seed>``."""
    name = f"demo-detection-{DEMO_DETECTION_VERSION}-{image_size}-{train_images}-{val_images}-{seed}"
    return cache_root() / name


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _draw_mask(
    name: str, cx: float, cy: float, r: float, theta: float, width: int, height: int
) -> np.ndarray:
    """``(height, width)`` anti-aliased coverage in 0..1 of one shape (centre, radius in pixels)."""
    s = _SUPERSAMPLE
    mask = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(mask)
    if name == "circle":
        draw.ellipse((s * (cx - r), s * (cy - r), s * (cx + r), s * (cy + r)), fill=255)
    else:
        draw.polygon(shape_polygon(name, s * cx, s * cy, s * r, theta), fill=255)
    return np.asarray(mask.resize((width, height), Image.BOX), dtype=np.float64) / 255.0


def render_detection_image(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, list, list]:
    """Draw one demo image.

    Args:
        rng: Source of all randomness.
        image_size: The smaller possible side; sides vary up to 1.4x this.

    Returns:
        ``(image, boxes, labels)``: boxes as ``[x, y, w, h]`` pixels (COCO), labels as class indices.
    """
    width, height = (int(v) for v in rng.integers(image_size, int(1.4 * image_size) + 1, size=2))
    side = max(width, height)
    pixels = textured_background(rng, side)[:height, :width]
    boxes, labels = [], []
    for _ in range(rng.choice(_OBJECTS, p=_OBJECT_P)):
        cls = int(rng.integers(len(DEMO_DETECTION_CLASSES)))
        for _attempt in range(20):
            r = image_size * rng.uniform(0.08, 0.2)
            cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
            mask = _draw_mask(
                DEMO_DETECTION_CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * np.pi), width, height
            )
            ys, xs = np.nonzero(mask >= 0.5)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
            if all(_iou(box, b) < 0.1 for b in boxes):
                break
        else:
            continue  # no free spot: fewer objects
        hue = cls / len(DEMO_DETECTION_CLASSES) + rng.uniform(-0.05, 0.05)
        colour = hsv255(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
        pixels = pixels * (1 - mask[..., None]) + colour * mask[..., None]
        boxes.append(box)
        labels.append(cls)
    pixels += rng.normal(0, rng.uniform(3, 10), size=pixels.shape)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    coco_boxes = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]
    return image, coco_boxes, labels


def _write_split(folder: Path, split: str, split_id: int, count: int, image_size: int, seed: int) -> None:
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, split_id, i])
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


def ensure_demo_detection(
    root: str | Path | None = None,
    *,
    image_size: int = 160,
    train_images: int = 320,
    val_images: int = 64,
    seed: int = 0,
) -> Path:
    """Generate the detection demo set once (deterministically) and return its folder.

    Args:
        root: Where to write it; ``None``: see :func:`default_demo_detection_root`.
        image_size: Smallest image side in pixels (sides vary up to 1.4x).
        train_images: Number of training images.
        val_images: Number of validation images.
        seed: Seed of the generator; the same arguments give the same files.

    Returns:
        The dataset root (standard COCO layout).

    Raises:
        FileExistsError: ``root`` exists, is not empty and is not a finished demo set.
    """
    check_int_args(
        ("image_size", image_size, 64), ("train_images", train_images, 1), ("val_images", val_images, 1)
    )
    if root is None:
        root = default_demo_detection_root(image_size, train_images, val_images, seed)
    info = {
        "version": DEMO_DETECTION_VERSION,
        "classes": list(DEMO_DETECTION_CLASSES),
        "image_size": image_size,
        "train": train_images,
        "val": val_images,
        "seed": seed,
    }

    def write(folder: Path) -> None:
        for split_id, (split, count) in enumerate((("train", train_images), ("val", val_images))):
            _write_split(folder, split, split_id, count, image_size, seed)

    return ensure_generated(Path(root).expanduser(), info, write)


def demo_detection_splits(
    root: str | Path | None = None,
    *,
    image_size: int = 160,
    train_images: int = 320,
    val_images: int = 64,
    seed: int = 0,
):
    """The generated detection demo (written once to a cache dir), read through the COCO loader."""
    from b4transfer.tasks.detection.data.coco import coco_splits

    folder = ensure_demo_detection(
        root, image_size=image_size, train_images=train_images, val_images=val_images, seed=seed
    )
    return coco_splits(folder)
