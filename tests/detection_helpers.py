"""Small detection datasets written into tmp dirs: COCO files, YOLO folders, and a COCO -> YOLO converter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size=(64, 48), seed: int = 0) -> Path:
    """A noisy RGB PNG of ``size=(width, height)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_coco(
    root: Path, *, images, annotations, categories, name="instances_train.json", folder="train"
) -> Path:
    """``root/annotations/<name>`` plus ``root/<folder>/<file_name>`` PNGs for every listed image."""
    for img in images:
        write_image(root / folder / img["file_name"], (img["width"], img["height"]), seed=img["id"])
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def small_coco(root: Path, name="instances_train.json", folder="train") -> Path:
    """3 images (one without boxes), non-contiguous category ids 7 (dog) and 3 (cat), one crowd box."""
    images = [{"id": 10 + i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in range(3)]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [30, 8, 12, 30], "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 40, 40], "iscrowd": 1},
    ]
    for ann in annotations:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    return write_coco(
        root, images=images, annotations=annotations, categories=categories, name=name, folder=folder
    )


def coco_to_yolo(coco_root: Path, yolo_root: Path, splits=("train", "val")) -> Path:
    """Convert a standard-layout COCO set (``annotations/instances_<split>.json`` + ``<split>/``) to YOLO."""
    names = None
    for split in splits:
        data = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in cats]
        index = {c["id"]: i for i, c in enumerate(cats)}
        per_image = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            per_image[ann["image_id"]].append(ann)
        for img in data["images"]:
            src = coco_root / split / img["file_name"]
            dst = yolo_root / "images" / split / img["file_name"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
            w, h = img["width"], img["height"]
            lines = []
            for ann in per_image[img["id"]]:
                x, y, bw, bh = ann["bbox"]
                lines.append(
                    f"{index[ann['category_id']]} {(x + bw / 2) / w:.17g} {(y + bh / 2) / h:.17g} "
                    f"{bw / w:.17g} {bh / h:.17g}"
                )
            label = (yolo_root / "labels" / split / img["file_name"]).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            if lines:  # images without boxes get no label file (the YOLO convention for negatives)
                label.write_text("\n".join(lines) + "\n")
    (yolo_root / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return yolo_root
