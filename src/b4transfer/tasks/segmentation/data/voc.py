"""Pascal VOC semantic masks (``data=voc_seg``)::

    root/JPEGImages/2007_000032.jpg
    root/SegmentationClass/2007_000032.png      palette PNG: 0 background, 1..20 the classes, 255 border
    root/ImageSets/Segmentation/train.txt       one image id per line (val.txt, optionally test.txt)

``root`` is the ``VOC2012`` folder (or a ``VOCdevkit`` holding one). The class names are VOC's 21 unless
``classes.txt`` in ``root`` lists others. A list naming an image or mask that does not exist is refused
at start-up, naming the list, the line and the missing file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from b4transfer.data.splits import SplitOptions, shown
from b4transfer.errors import UserError, UserFileNotFoundError
from b4transfer.tasks.segmentation.data.folder import read_names
from b4transfer.tasks.segmentation.data.masks import (
    IGNORE_INDEX,
    MaskSample,
    MaskSplits,
    assemble_mask_splits,
)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
LISTS = ("ImageSets", "Segmentation")


def _voc_root(root: Path) -> Path:
    if (root / LISTS[0]).is_dir():
        return root
    inner = sorted(p for p in root.glob("VOC*") if (p / LISTS[0]).is_dir())
    if inner:
        return inner[-1]
    raise UserFileNotFoundError(
        f"data.root={str(root)!r} has no ImageSets/Segmentation lists (nor a VOC2012/ folder holding them). "
        "Fix: point data.root at the VOC2012 folder (JPEGImages/, SegmentationClass/, "
        "ImageSets/Segmentation/)."
    )


def _read_list(root: Path, split: str) -> list[MaskSample] | None:
    path = root.joinpath(*LISTS, f"{split}.txt")
    if not path.is_file():
        return None
    samples, missing = [], []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip().split()[0] if line.strip() else ""
        if not name:
            continue
        image, mask = root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"
        missing += [f"line {line_no}: {p}" for p in (image, mask) if not p.is_file()]
        samples.append(MaskSample(image, mask))
    if missing:
        raise UserFileNotFoundError(
            f"{path} names {len(missing)} file(s) that do not exist ({shown(missing)}). Fix: restore those "
            "files (JPEGImages/<id>.jpg and SegmentationClass/<id>.png), or delete their lines from the list."
        )
    return samples


def voc_seg_splits(
    root: str | Path | None,
    *,
    ignore_index: int = IGNORE_INDEX,
    **split: Any,
) -> MaskSplits:
    """Read a Pascal VOC segmentation set (see the module docstring); ``split``: the
    :class:`~b4transfer.data.splits.SplitOptions` (``val_fraction``, ``seed``, ``on_bad_image``)."""
    options = SplitOptions(**split)
    if root in (None, ""):
        raise UserError("data.root is not set. Fix: data.root=/path/to/VOCdevkit/VOC2012.")
    root = _voc_root(Path(root).expanduser())
    tagged = {split: s for split in ("train", "val", "test") if (s := _read_list(root, split)) is not None}
    if not tagged.get("train"):
        raise UserFileNotFoundError(
            f"{root.joinpath(*LISTS, 'train.txt')} does not exist or is empty. Fix: add the list "
            "of training ids."
        )
    names = read_names(root)[0] or list(VOC_CLASSES)
    return assemble_mask_splits(names, tagged, source=root, options=options, ignore_index=ignore_index)
