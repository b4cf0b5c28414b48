"""Image + mask folders for semantic masks (``data=seg_folder``).

Two layouts are read::

    root/images/train/**/a.jpg   root/masks/train/**/a.png      (+ val/, optionally test/)
    root/images/a.jpg            root/masks/a.png               (one pool: a seeded val_fraction is held out)

A mask has its image's relative path and stem, any image extension (PNG: lossless). It holds one class
index per pixel (8-bit ``L``, a palette PNG such as VOC's, or 16-bit), or colours mapped by
``data.palette``; ``data.ignore_index`` (255) marks pixels to ignore. Class names come from
``root/classes.txt`` (line ``i`` names value ``i``) or ``root/classes.yaml`` (``names: [...]``, optional
``palette: [[r,g,b], ...]``), else ``class_<i>`` up to the largest value found. ``valid/`` and
``validation/`` are accepted for ``val/``. Every image needs a mask and every mask an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from b4transfer.data.folder import VAL_DIR_NAMES, list_images
from b4transfer.data.splits import SplitOptions, shown
from b4transfer.errors import UserError, UserFileNotFoundError
from b4transfer.tasks.segmentation.data.masks import (
    IGNORE_INDEX,
    MaskSample,
    MaskSplits,
    assemble_mask_splits,
    check_palette,
)

NAMES_FILES = ("classes.txt", "classes.yaml", "classes.yml")
_LAYOUT = (
    "root/images/{train,val}/*.jpg with root/masks/{train,val}/<same stem>.png, or root/images + root/masks"
)


def read_names(root: Path) -> tuple[list[str] | None, list | None]:
    """``(class names, palette)`` from ``classes.txt`` / ``classes.yaml`` in ``root``; ``(None, None)``."""
    found = [root / n for n in NAMES_FILES if (root / n).is_file()]
    if not found:
        return None, None
    path = found[0]
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()], None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML ({e}). Fix: repair the file.") from e
    names = data.get("names") if isinstance(data, dict) else data
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise UserError(
                f"{path}: 'names' keys must be 0..{len(names) - 1}, got {sorted(names)}. Fix: number them."
            )
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise UserError(
            f"{path}: no 'names' list (got {names!r}). Fix: write 'names: [background, cat, ...]'."
        )
    palette = data.get("palette") if isinstance(data, dict) else None
    return [str(n) for n in names], check_palette(palette, f"{path}: palette")


def _pairs(images_dir: Path, masks_dir: Path) -> list[MaskSample]:
    """Images paired with masks by relative path and stem; an orphan on either side is refused."""
    if not masks_dir.is_dir():
        raise UserFileNotFoundError(
            f"{images_dir} has no mask folder {masks_dir}. Fix: put each image's mask there under the same "
            f"relative path and stem ({_LAYOUT})."
        )
    images = {p.relative_to(images_dir).with_suffix(""): p for p in list_images(images_dir)}
    masks = {p.relative_to(masks_dir).with_suffix(""): p for p in list_images(masks_dir)}
    unpaired = (  # (these, without a partner among those, are refused: what, fix)
        (images, masks, f"image(s) have no mask in {masks_dir}", "add a mask with the same relative path and "
         "stem (e.g. images/train/a.jpg -> masks/train/a.png), or remove the images."),
        (masks, images, f"mask(s) have no image in {images_dir}", "add the images, or remove those masks (a "
         "renamed image leaves its mask behind)."),
    )
    for these, those, what, fix in unpaired:
        alone = sorted(str(these[k]) for k in these.keys() - those.keys())
        if alone:
            raise UserError(f"{len(alone)} {what} ({shown(alone)}). Fix: {fix}")
    if not images:
        raise UserError(
            f"{images_dir} holds no images. Fix: point data.root at a folder laid out as {_LAYOUT}."
        )
    return [MaskSample(images[k], masks[k]) for k in sorted(images)]


def seg_folder_splits(
    root: str | Path | None,
    *,
    ignore_index: int = IGNORE_INDEX,
    palette=None,
    **split: Any,
) -> MaskSplits:
    """Read an images/ + masks/ folder (see the module docstring).

    Args:
        root: Dataset root.
        **split: The :class:`~b4transfer.data.splits.SplitOptions`: ``val_fraction`` (share held out for
            validation when there is no val/ folder), ``seed`` (of that split) and ``on_bad_image``
            (``"skip"`` or ``"error"`` for unreadable images).
        ignore_index: Mask value of pixels to ignore.
        palette: ``[[r, g, b], ...]`` class colours of RGB masks (wins over ``classes.yaml``'s).
    """
    options = SplitOptions(**split)
    if root in (None, ""):
        raise UserError(f"data.root is not set. Fix: data.root=/path/to/dataset ({_LAYOUT}).")
    root = Path(root).expanduser()
    if not (root / "images").is_dir():
        raise UserFileNotFoundError(
            f"data.root={str(root)!r} has no images/ folder. Fix: lay it out as {_LAYOUT}."
        )
    names, file_palette = read_names(root)
    splits = {
        "train": "train",
        "val": next((d for d in VAL_DIR_NAMES if (root / "images" / d).is_dir()), None),
        "test": "test",
    }
    tagged = {}
    if (root / "images" / "train").is_dir():
        for split, folder in splits.items():
            if folder and (root / "images" / folder).is_dir():
                tagged[split] = _pairs(root / "images" / folder, root / "masks" / folder)
    else:
        tagged["train"] = _pairs(root / "images", root / "masks")
    palette = palette if palette is not None else file_palette
    return assemble_mask_splits(
        names, tagged, source=root, options=options, ignore_index=ignore_index, palette=palette
    )
