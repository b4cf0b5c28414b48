"""``data=coco`` with ``task=segmentation``: COCO instance masks rendered into semantic masks.

The same files and layouts as detection's COCO reader (:func:`b4transfer.data.coco.coco_files`; its
checks of images, sizes, ids and categories apply), and each annotation's ``segmentation`` — polygons,
or RLE (compressed or not) — is rendered with pycocotools when an image is loaded (the start-up scan
reads the class pixel counts from the annotations' ``area`` instead of rendering every mask). Class 0 is
``background``; category ``i`` (sorted by id) is class ``i + 1``. Overlaps: a later annotation (file
order) paints over an earlier one; crowd regions (``iscrowd: 1``) become the ignore index where no
instance covers them. An annotation without a usable ``segmentation`` stops the run at start-up, naming
the file, the annotation id and the value.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from b4transfer.data.coco import coco_files, load_json, read_coco
from b4transfer.data.masks import IGNORE_INDEX, MaskSample, MaskSplits, assemble_mask_splits
from b4transfer.errors import MissingDependencyError, UserError

BACKGROUND = "background"


def _mask_utils():
    try:
        from pycocotools import mask
    except ImportError as e:
        raise MissingDependencyError(
            f"data=coco with task=segmentation renders masks with pycocotools ({e}). Fix: pip "
            "install pycocotools."
        ) from e
    return mask


@dataclass
class CocoMask:
    """A semantic mask made from one image's annotations: ``[(segmentation, class, iscrowd), ...]``."""

    annotations: list[tuple[object, int, int]]
    ignore_index: int = IGNORE_INDEX
    areas: list[float] | None = None  # each annotation's 'area' (pixels)

    def pixel_counts(self, width: int, height: int) -> tuple[list[int], list[int]]:
        """``(values, pixels)`` from the annotations' areas, without rendering (the start-up scan of a
        large COCO set stays cheap; overlaps count twice, so the shares are approximate)."""
        counts: dict[int, float] = {}
        for (_, label, iscrowd), area in zip(self.annotations, self.areas or [0.0] * len(self.annotations)):
            key = self.ignore_index if iscrowd else label
            counts[key] = counts.get(key, 0.0) + float(area)
        counts[0] = max(0.0, width * height - sum(counts.values()))
        return list(counts), [round(v) for v in counts.values()]

    def render(self, height: int, width: int) -> np.ndarray:
        utils = _mask_utils()
        out = np.zeros((height, width), np.int64)
        covered = np.zeros((height, width), bool)
        crowd = np.zeros((height, width), bool)
        for segm, label, iscrowd in self.annotations:
            rle = utils.frPyObjects(segm, height, width) if not _compressed(segm) else segm
            area = utils.decode(utils.merge(rle) if isinstance(rle, list) else rle).astype(bool)
            if iscrowd:
                crowd |= area
            else:
                out[area], covered[area] = label, True
        out[crowd & ~covered] = self.ignore_index
        return out


def _area(segm, size: tuple[int, int]) -> float:
    """The pixel area of a ``segmentation`` whose annotation gives no ``area``."""
    utils = _mask_utils()
    rle = segm if _compressed(segm) else utils.frPyObjects(segm, size[1], size[0])
    return float(utils.area(utils.merge(rle) if isinstance(rle, list) else rle))


def _compressed(segm) -> bool:
    return isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes))


def check_segmentation(segm, size: tuple[int, int], path: Path, aid) -> object:
    """A usable ``segmentation`` (polygons, or RLE of the image's size), else a one-line error."""
    width, height = size
    if (
        isinstance(segm, list)
        and segm
        and all(
            isinstance(p, list)
            and len(p) >= 6
            and len(p) % 2 == 0
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in p)
            for p in segm
        )
    ):
        return segm
    if isinstance(segm, dict) and "counts" in segm:
        if list(segm.get("size") or []) != [height, width]:
            raise UserError(
                f"{path}: annotation id {aid} has an RLE of size {segm.get('size')!r} on an "
                "image of height x "
                f"width [{height}, {width}]. Fix: re-encode the mask at the image's size (RLE "
                "size is [h, w])."
            )
        return {
            **segm,
            "counts": segm["counts"].encode() if isinstance(segm["counts"], str) else segm["counts"],
        }
    shown = repr(segm)[:80]
    raise UserError(
        f"{path}: annotation id {aid} has segmentation {shown}; semantic masks need polygons "
        "[[x1, y1, x2, y2, "
        "x3, y3, ...], ...] or an RLE {'size': [h, w], 'counts': ...}. Fix: export instance masks, or use "
        "task=detection for boxes only."
    )


def read_coco_masks(json_path: Path, image_dir: Path, *, categories=None, key: str, ignore_index: int):
    """``(names, ids, samples)`` of one instances file, each sample's mask a :class:`CocoMask`."""
    data = load_json(json_path, key)
    names, ids, samples, _ = read_coco(json_path, image_dir, categories=categories, key=key, data=data)
    label_of = {cid: i + 1 for i, cid in enumerate(ids)}
    size_of = {s.image_id: s.size for s in samples}
    per_image: dict[int, list] = {s.image_id: [] for s in samples}
    areas: dict[int, list[float]] = {s.image_id: [] for s in samples}
    for i, ann in enumerate(data.get("annotations") or []):  # read_coco checked ids and categories
        aid = ann.get("id", f"#{i}")
        segm = check_segmentation(ann.get("segmentation"), size_of[ann["image_id"]], json_path, aid)
        per_image[ann["image_id"]].append(
            (segm, label_of[ann["category_id"]], int(bool(ann.get("iscrowd", 0))))
        )
        area = ann.get("area")
        ok = isinstance(area, numbers.Real) and not isinstance(area, bool) and area >= 0
        areas[ann["image_id"]].append(float(area) if ok else _area(segm, size_of[ann["image_id"]]))
    out = [
        MaskSample(s.path, CocoMask(per_image[s.image_id], ignore_index, areas[s.image_id]), s.size)
        for s in samples
    ]
    return names, ids, out


def coco_semantic_splits(
    root: str | Path | None = None,
    *,
    train_json=None,
    train_images=None,
    val_json=None,
    val_images=None,
    test_json=None,
    test_images=None,
    val_fraction: float = 0.2,
    seed: int = 0,
    on_bad_image: str = "skip",
    ignore_index: int = IGNORE_INDEX,
) -> MaskSplits:
    """Read a COCO instances dataset as semantic masks (the arguments are "
    ":func:`~b4transfer.data.coco.coco_splits`'s)."""
    files = coco_files(
        root, train=(train_json, train_images), val=(val_json, val_images), test=(test_json, test_images)
    )
    names, ids, train = read_coco_masks(*files["train"], key="data.train_json", ignore_index=ignore_index)
    tagged = {"train": train}
    for split in ("val", "test"):
        if split in files:
            tagged[split] = read_coco_masks(
                *files[split], categories=(names, ids), key=f"data.{split}_json", ignore_index=ignore_index
            )[2]
    if BACKGROUND in names:
        raise UserError(
            f"{files['train'][0]}: a category is named {BACKGROUND!r}, the name of class 0 (no "
            "annotation). Fix: rename that category."
        )
    return assemble_mask_splits(
        [BACKGROUND, *names],
        tagged,
        source=files["train"][0],
        val_fraction=val_fraction,
        seed=seed,
        on_bad_image=on_bad_image,
        ignore_index=ignore_index,
    )
