"""YOLO (ultralytics) layout: ``images/<split>/`` and ``labels/<split>/*.txt``, class names from a file.

::

    root/data.yaml            names: [cat, dog]   (or {0: cat, 1: dog}); or root/classes.txt, one per line
    root/images/train/a.jpg   root/labels/train/a.txt    "<class> <cx> <cy> <w> <h>" per line,
    root/images/val/b.jpg     root/labels/val/b.txt      normalised to 0..1 by the image size

The split-first layout of Roboflow's YOLO exports (``train/images``, ``train/labels``, ``valid/...``,
``test/...``) works too. ``valid/`` is accepted for ``val/``; without a val folder a seeded share of
train is held out. A
polygon line (``<class> x1 y1 x2 y2 ...``, ultralytics' segment format) becomes its bounding box.
An image without a label file, or with an empty one, is a negative. Labels are the class indices;
for COCO results JSON the category id of class ``i`` is ``i``. Malformed lines stop at start-up with
the file and line number; label files with no image stop it too (they mean a broken dataset).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from b4transfer.data.boxes import BoxCleaner, make_sample
from b4transfer.data.folder import list_images
from b4transfer.data.images import ImageLoadError, upright_size
from b4transfer.data.splits import SplitOptions, shown
from b4transfer.errors import UserError, UserFileNotFoundError
from b4transfer.tasks.detection.data.splits import DetectionSplits, assemble_detection_splits

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
NAMES_FILES = ("data.yaml", "dataset.yaml", "classes.txt")


def read_class_names(root: Path, names_file: str | Path | None = None) -> list[str]:
    """Class names from ``names_file``, else root's ``data.yaml``, ``dataset.yaml`` or ``classes.txt``."""
    if names_file not in (None, ""):
        path = Path(names_file).expanduser()
        if not path.is_file():
            raise UserFileNotFoundError(
                f"data.names_file={str(names_file)!r} does not exist. Fix: point it at a data.yaml with "
                "'names', or a classes.txt with one class name per line."
            )
    else:
        found = [root / n for n in NAMES_FILES if (root / n).is_file()]
        if not found:
            raise UserFileNotFoundError(
                f"{root}: no class names ({', '.join(NAMES_FILES)} not found). Fix: add data.yaml with "
                "'names: [cat, dog]' (ultralytics style) or classes.txt with one name per line, or set "
                "data.names_file=FILE."
            )
        path = found[0]
    if path.suffix.lower() in (".yaml", ".yml"):
        return check_unique_names(_names_from_yaml(path), path)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path} lists no class names. Fix: write one class name per line.")
    return check_unique_names(names, path)


def check_unique_names(names: list[str], path: Path) -> list[str]:
    """Refuse a class name given to two indices: their boxes would be scored as one class (one AP lost)."""
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        seen.setdefault(name, []).append(i)
    dupes = {name: ids for name, ids in seen.items() if len(ids) > 1}
    if dupes:
        listed = "; ".join(f"{name!r} at indices {ids}" for name, ids in dupes.items())
        raise UserError(
            f"{path}: class names must be distinct, but {listed}. Fix: rename the classes in {path.name} "
            "(or merge their labels into one index)."
        )
    return names


def _names_from_yaml(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: malformed YAML{where}: {e}. Fix: repair the file.") from e
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise UserError(
                f"{path}: 'names' keys must be 0..{len(keys) - 1}, got {keys}. Fix: number them."
            )
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: no 'names' list (got {names!r}). Fix: add 'names: [cat, dog]'.")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise UserError(f"{path}: nc={nc} but 'names' lists {len(names)} classes. Fix: make them agree.")
    return [str(n) for n in names]


def _parse_line(text: str, file: Path, line: int, num_classes: int) -> tuple[int, list[float]]:
    """``(class, [cx, cy, w, h])`` (normalised) of one label line."""
    parts = text.split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(
            f"{file}, line {line}: {text.strip()!r} is not numbers. Fix: write '<class> <cx> <cy> <w> <h>' "
            "with the box normalised to 0..1."
        ) from None
    if not (len(values) == 5 or (len(values) >= 7 and len(values) % 2 == 1)):
        raise UserError(
            f"{file}, line {line}: {len(values)} values in {text.strip()!r}; expected 5 "
            "('<class> <cx> <cy> <w> <h>') or a polygon '<class> x1 y1 x2 y2 x3 y3 ...'. "
            "Fix: correct the line."
        )
    cls = values[0]
    if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
        raise UserError(
            f"{file}, line {line}: class {parts[0]!r} is not a class index in 0..{num_classes - 1} "
            f"({num_classes} class names). Fix: correct the line or the class names file."
        )
    if len(values) > 5:  # polygon -> its bounding box
        xs, ys = values[1::2], values[2::2]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
        return int(cls), [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    return int(cls), values[1:]


def label_path(image: Path, images_dir: Path, labels_dir: Path) -> Path:
    """``labels/<split>/<same relative path>.txt`` for ``images/<split>/<relative path>``."""
    return (labels_dir / image.relative_to(images_dir)).with_suffix(".txt")


def _read_split(images_dir: Path, labels_dir: Path, names: list[str], cleaner: BoxCleaner, first_id: int):
    images = list_images(images_dir)
    wanted = {label_path(p, images_dir, labels_dir) for p in images}
    orphans = (
        sorted(p for p in labels_dir.rglob("*.txt") if p not in wanted and p.name != "classes.txt")
        if labels_dir.is_dir()
        else []
    )
    if orphans:
        raise UserError(
            f"{labels_dir}: {len(orphans)} label file(s) have no matching image in {images_dir} "
            f"({shown(orphans)}). Fix: add the images (same relative path, any image "
            "extension) or delete those label files."
        )
    samples = []
    for offset, image in enumerate(images):
        try:
            size = upright_size(image)
        except ImageLoadError:  # unreadable: left for drop_unreadable to skip (or refuse)
            samples.append(make_sample(image, [], [], image_id=first_id + offset, size=(1, 1)))
            continue
        labels, boxes, where = [], [], []
        label_file = label_path(image, images_dir, labels_dir)
        if label_file.is_file():
            for number, text in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
                if text.strip():
                    cls, (cx, cy, w, h) = _parse_line(text, label_file, number, len(names))
                    labels.append(cls)
                    boxes.append(
                        [
                            (cx - w / 2) * size[0],
                            (cy - h / 2) * size[1],
                            (cx + w / 2) * size[0],
                            (cy + h / 2) * size[1],
                        ]
                    )
                    where.append(f"{label_file.name}:{number}")
        box_array = np.array(boxes, np.float64).reshape(-1, 4)
        keep = cleaner(box_array, size, where)
        samples.append(
            make_sample(
                image,
                box_array[keep],
                np.asarray(labels, np.int64)[keep],
                image_id=first_id + offset,
                size=size,
            )
        )
    return samples


def _split_dir(root: Path, split: str) -> tuple[Path, Path] | None:
    """``(images, labels)`` folders of a split: ``images/<split>`` (ultralytics) or ``<split>/images``
    (the split-first layout of Roboflow's YOLO exports: ``train/``, ``valid/``, ``test/``)."""
    for name in SPLIT_DIRS[split]:
        if (root / "images" / name).is_dir():
            return root / "images" / name, root / "labels" / name
        if (root / name / "images").is_dir():
            return root / name / "images", root / name / "labels"
    return None


def yolo_splits(
    root: str | Path | None,
    *,
    names_file: str | Path | None = None,
    **split: Any,
) -> DetectionSplits:
    """Read a YOLO-layout dataset into train/val(/test) splits.

    Args:
        root: Folder with ``images/<split>/``, ``labels/<split>/`` and the class names file.
        names_file: A ``data.yaml`` (with ``names``) or ``classes.txt``; ``None``: found under ``root``.
        **split: The :class:`~b4transfer.data.splits.SplitOptions`: ``val_fraction`` (share of training
            images held out when there is no ``images/val``), ``seed`` (of that split) and ``on_bad_image``
            (``"skip"``: count and warn, or ``"error"`` for unreadable images).

    Returns:
        The dataset splits.
    """
    options = SplitOptions(**split)
    if root in (None, ""):
        raise UserError("data=yolo needs data.root=DIR (with images/train and labels/train). Fix: set it.")
    root = Path(root).expanduser()
    if _split_dir(root, "train") is None:
        raise UserFileNotFoundError(
            f"data.root={str(root)!r}: no images/train (or train/images) folder. Fix: use the ultralytics "
            "layout images/{train,val}/ + labels/{train,val}/, or train/{images,labels}/ + "
            "valid/{images,labels}/, with a data.yaml or classes.txt."
        )
    names = read_class_names(root, names_file)
    cleaner = BoxCleaner(root / "labels")
    tagged, next_id = {}, 1
    for split in ("train", "val", "test"):
        dirs = _split_dir(root, split)
        if dirs is not None:
            tagged[split] = _read_split(*dirs, names, cleaner, next_id)
            next_id += len(tagged[split])
    if not tagged["train"]:
        raise UserError(f"{root / 'images' / 'train'} holds no images. Fix: put the training images there.")
    return assemble_detection_splits(
        names, list(range(len(names))), tagged, source=root, options=options, box_counts=cleaner.report()
    )
