"""``data=coco`` with ``task=segmentation``: COCO instance masks rendered into semantic masks.

The same files and layouts as every COCO reader (:func:`b4transfer.data.coco.coco_files`; its
checks of images, sizes, ids and categories apply), and each annotation's ``segmentation`` — polygons,
or RLE (compressed or not) — is rendered with pycocotools when an image is loaded (the start-up scan
reads the class pixel counts from the annotations' ``area`` instead of rendering every mask). Class 0 is
``background``; category ``i`` (sorted by id) is class ``i + 1``. Overlaps: a later annotation (file
order) paints over an earlier one; crowd regions (``iscrowd: 1``) become the ignore index where no
instance covers them. An annotation without a usable ``segmentation`` (polygons with a coordinate that is
not finite or far outside the image, an RLE whose runs do not decode to the image's size) stops the run
at start-up, naming the file, the annotation id and the value; so do more categories than
``data.ignore_index`` leaves room for (set it to 65535 for 255 or more categories).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from b4transfer.data.coco import coco_files, load_json, read_coco
from b4transfer.data.splits import SplitOptions
from b4transfer.errors import MissingDependencyError, UserError
from b4transfer.tasks.segmentation.data.masks import (
    IGNORE_INDEX,
    MaskSample,
    MaskSplits,
    assemble_mask_splits,
)

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


def rle_counts(counts: bytes) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (``maskApi.c``'s ``rleFrString`` in Python, which
    cannot crash), or ``None`` when the string is not one: a character outside ``0``..``o`` or a cut-off
    number."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts) or not 48 <= counts[p] < 48 + 64:
                return None
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        runs.append(x + (runs[-2] if len(runs) > 2 else 0))
    return runs


def _bad_rle(segm: dict, size: tuple[int, int]) -> str | None:
    """Why an RLE of the image's size cannot be decoded (``None``: it can)."""
    counts = segm["counts"]
    runs = rle_counts(counts.encode() if isinstance(counts, str) else counts) if _compressed(segm) else counts
    if not isinstance(runs, list) or not all(
        isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in runs
    ):
        return "its 'counts' are not a COCO RLE (a compressed string or a list of integers)"
    if any(r < 0 for r in runs) or sum(runs) != size[0] * size[1]:
        return f"its run lengths sum to {sum(runs)} (negative runs: {sum(r < 0 for r in runs)}), not h x w"
    return None


def _bad_polygon(segm: list, size: tuple[int, int]) -> str | None:
    """Why polygons cannot be drawn on the image (``None``: they can): a coordinate that is not finite or
    lies more than an image's size outside it (pycocotools would allocate for it, or crash)."""
    width, height = size
    for poly in segm:
        if not all(map(math.isfinite, poly)):
            return f"a polygon holds a coordinate that is not a finite number ({_shown(poly)})"
        xs, ys = poly[0::2], poly[1::2]
        if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
            return (
                f"a polygon reaches far outside the {width}x{height} image (x {min(xs):g}..{max(xs):g}, "
                f"y {min(ys):g}..{max(ys):g})"
            )
    return None


def _shown(value) -> str:
    return repr(value)[:80]


def check_segmentation(segm, size: tuple[int, int], path: Path, aid) -> object:
    """A usable ``segmentation`` (polygons of finite coordinates near the image, or a decodable RLE of the
    image's size), else a one-line error naming the file, the annotation id and the value."""
    width, height = size
    why = None
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
        why = _bad_polygon(segm, size)
        if why is None:
            return segm
    elif isinstance(segm, dict) and "counts" in segm:
        if list(segm.get("size") or []) != [height, width]:
            raise UserError(
                f"{path}: annotation id {aid} has an RLE of size {segm.get('size')!r} on an "
                "image of height x "
                f"width [{height}, {width}]. Fix: re-encode the mask at the image's size (RLE "
                "size is [h, w])."
            )
        why = _bad_rle(segm, size)
        if why is None:
            counts = segm["counts"]
            return {**segm, "counts": counts.encode() if isinstance(counts, str) else counts}
    if why is not None:
        raise UserError(
            f"{path}: annotation id {aid} has a segmentation that cannot be drawn: {why}. Fix: correct or "
            "re-export that annotation (pycocotools' mask.encode writes valid RLE), or delete it."
        )
    raise UserError(
        f"{path}: annotation id {aid} has segmentation {_shown(segm)}; semantic masks need polygons "
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
    ignore_index: int = IGNORE_INDEX,
    **split: Any,
) -> MaskSplits:
    """Read a COCO instances dataset as semantic masks (the files as
    :func:`~b4transfer.data.coco.coco_files` finds or takes them; ``ignore_index``: the mask value
    ignored; ``split``: the :class:`~b4transfer.data.splits.SplitOptions`, ``val_fraction``, ``seed`` and
    ``on_bad_image``)."""
    options = SplitOptions(**split)
    files = coco_files(
        root, train=(train_json, train_images), val=(val_json, val_images), test=(test_json, test_images)
    )
    names, ids, train = read_coco_masks(*files["train"], key="data.train_json", ignore_index=ignore_index)
    classes = len(names) + 1
    if isinstance(ignore_index, int) and 0 <= ignore_index < classes:
        raise UserError(
            f"{files['train'][0]}: {len(names)} categories + background = {classes} classes reach "
            f"data.ignore_index={ignore_index}: category {names[ignore_index - 1]!r} (class {ignore_index}) "
            "would be read as 'ignore' and never learned. Fix: data.ignore_index=65535 (any value >= "
            f"{classes}; masks are rendered as 64-bit integers, predicted masks written as 16-bit PNGs), "
            "or keep fewer categories in the JSON."
        )
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
        [BACKGROUND, *names], tagged, source=files["train"][0], options=options, ignore_index=ignore_index
    )
