"""Semantic masks: samples and splits, mask decoding, and the start-up checks every mask reader shares.

A reader (``seg_folder``, ``voc_seg``, COCO rendered to semantic masks, the generated demo) turns its
source into :class:`MaskSample` lists — an image and its mask: a PNG file of class indices (``L``,
palette ``P`` or 16-bit), an RGB PNG with a colour per class (``data.palette``), or an object that
renders the mask (``render(height, width)``, COCO polygons) — and calls :func:`assemble_mask_splits`.

That decodes every mask once at start-up (threads) and refuses, before any training step, a mask whose
size differs from its image, values that are neither a class nor the ignore index, and RGB masks with no
palette mapping, each naming the file, the value and the fix. It also counts each class's training pixels
(for ``loss.class_weights=auto``), drops unreadable images (skipped and counted, as for classification)
and carves a seeded validation split when the source has none.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from b4transfer.data.detection import random_val_split
from b4transfer.data.images import ImageLoadError, upright_size
from b4transfer.data.splits import (
    DEFAULT_CHECK_THREADS,
    check_on_bad_image,
    check_val_fraction,
    drop_unreadable,
    shown,
)
from b4transfer.errors import UserError

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
INDEX_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I", "1")
COLOUR_MODES = ("RGB", "RGBA")


class MaskRenderer(Protocol):
    """A mask made on the fly (e.g. COCO polygons): ``render(height, width) -> (H, W) int array``."""

    def render(self, height: int, width: int) -> np.ndarray: ...


@dataclass
class MaskSample:
    """One image and its semantic mask.

    Args:
        path: Image file.
        mask: Mask PNG (class index per pixel), or a :class:`MaskRenderer`.
        size: ``(width, height)`` of the upright image (and of its mask); ``None`` until checked.
    """

    path: Path
    mask: Path | Any
    size: tuple[int, int] | None = None


@dataclass
class MaskSplits:
    """Everything a semantic-mask data module needs.

    Args:
        class_names: Class names; mask value ``i`` means ``class_names[i]``.
        train: Training samples.
        val: Validation samples.
        test: Test samples (may be empty).
        skipped: ``(path, reason)`` for every unreadable image left out.
        ignore_index: The mask value that marks pixels to ignore (borders, crowds, padding).
        palette: RGB colour of each class (for RGB masks and written masks); ``None``: the default one.
        class_pixels: Training pixels per class.
    """

    class_names: list[str]
    train: list[MaskSample]
    val: list[MaskSample]
    test: list[MaskSample] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX
    palette: list[tuple[int, int, int]] | None = None
    class_pixels: list[int] = field(default_factory=list)

    multi_label = False

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (class 0 black, 1 dark red, 2 green, ...): distinct, well known."""
    colours = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def check_palette(palette, where: str = "data.palette") -> list[tuple[int, int, int]] | None:
    """``[[r, g, b], ...]`` (one per class) as tuples; ``None`` passes."""
    if palette is None:
        return None
    ok = isinstance(palette, (list, tuple)) and all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette
    )
    if not ok or len({tuple(c) for c in palette}) != len(palette):
        raise UserError(
            f"{where}={palette!r} must list one distinct [r, g, b] colour (0..255) per class, in "
            "class order. "
            "Fix: e.g. data.palette=[[0,0,0],[128,0,0],[0,128,0]]."
        )
    return [tuple(int(v) for v in c) for c in palette]


def read_mask(
    mask: Path | Any, palette: list[tuple[int, int, int]] | None = None, *, size=None
) -> np.ndarray:
    """A mask as an ``(H, W)`` int64 array of class indices.

    Args:
        mask: A PNG of indices (``L``, ``P``, 16-bit) or of colours (``RGB``, mapped by ``palette``), or a
            :class:`MaskRenderer` (rendered at ``size=(width, height)``).
        palette: Class colours for RGB masks; a colour not in it becomes ``-1`` (found by the checks).
        size: ``(width, height)`` for a renderer.

    Raises:
        UserError: The file is unreadable, of another mode, or RGB with no ``palette``.
    """
    if not isinstance(mask, (str, Path)):
        return np.asarray(mask.render(size[1], size[0]), dtype=np.int64)
    try:
        with Image.open(mask) as img:
            img.load()
            mode = img.mode
            if mode in COLOUR_MODES:
                pixels = np.asarray(img.convert("RGB"))
            elif mode in INDEX_MODES:
                return np.asarray(img, dtype=np.int64)
            else:
                raise UserError(
                    f"mask {mask}: PIL mode {mode!r} is not a mask. Fix: save masks as 8-bit PNGs of class "
                    "indices (mode L or P), or RGB PNGs with data.palette giving each class's colour."
                )
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(
            f"mask {mask} cannot be read ({err}). Fix: re-save it as a PNG, or remove the pair."
        ) from err
    if palette is None:
        colours = np.unique(pixels.reshape(-1, 3), axis=0)[:4].tolist()
        raise UserError(
            f"mask {mask} is an RGB image (colours such as {colours}) but no palette maps "
            "colours to classes. "
            "Fix: set data.palette=[[r,g,b],...] (one colour per class, in class order; or 'palette:' in "
            "classes.yaml), or save masks as 8-bit PNGs of class indices."
        )
    code = pixels[..., 0].astype(np.int64) << 16 | pixels[..., 1].astype(np.int64) << 8 | pixels[..., 2]
    keys = np.array([r << 16 | g << 8 | b for r, g, b in palette], np.int64)
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
    found = keys[order][pos] == code
    return np.where(found, order[pos], -1)


def mask_size(mask: Path | Any) -> tuple[int, int] | None:
    """``(width, height)`` of a mask file from its header; ``None`` for a renderer (made to size)."""
    if not isinstance(mask, (str, Path)):
        return None
    try:
        with Image.open(mask) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(
            f"mask {mask} cannot be read ({err}). Fix: re-save it as a PNG, or remove the pair."
        ) from err


@dataclass
class _Scan:
    sample: MaskSample
    values: np.ndarray  # distinct values
    counts: np.ndarray  # pixels per value


def _scan_one(sample: MaskSample, palette) -> _Scan:
    image_size = sample.size or upright_size(sample.path)
    size = mask_size(sample.mask)
    if size is not None and size != tuple(image_size):
        raise UserError(
            f"mask {sample.mask} is {size[0]}x{size[1]} but its image {sample.path} is "
            f"{image_size[0]}x{image_size[1]} (upright). Fix: save the mask at the image's size "
            "(masks are never "
            "resized, which would blur class borders), or remove the pair."
        )
    sample.size = (int(image_size[0]), int(image_size[1]))
    if hasattr(sample.mask, "pixel_counts"):  # a renderer that knows its values without rendering (COCO)
        values, counts = sample.mask.pixel_counts(*sample.size)
        return _Scan(sample, np.asarray(values, np.int64), np.asarray(counts, np.int64))
    values, counts = np.unique(read_mask(sample.mask, palette, size=sample.size), return_counts=True)
    return _Scan(sample, values, counts)


def scan_masks(samples: list[MaskSample], palette=None, threads: int = DEFAULT_CHECK_THREADS) -> list[_Scan]:
    """Decode every mask once (threads): sizes against the images, distinct values and their counts."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(lambda s: _scan_one(s, palette), samples))


def check_values(scans: list[_Scan], num_classes: int, ignore_index: int, source) -> None:
    """Refuse mask values that are neither a class ``0..num_classes-1`` nor ``ignore_index``."""
    bad = []
    for scan in scans:
        wrong = [int(v) for v in scan.values if not (0 <= v < num_classes or v == ignore_index)]
        if wrong:
            shown_values = ["colour not in data.palette" if v == -1 else v for v in wrong[:6]]
            bad.append(f"{scan.sample.mask}: {shown_values}")
    if bad:
        raise UserError(
            f"{source}: {len(bad)} mask(s) hold values that are neither a class "
            f"(0..{num_classes - 1}) nor the "
            f"ignore index {ignore_index} ({shown(bad)}). Fix: correct those masks, list the missing classes "
            "in classes.txt, or set data.ignore_index to the value that marks pixels to ignore."
        )


def class_names_for(scans: list[_Scan], ignore_index: int) -> list[str]:
    """``class_<i>`` for every value up to the largest found (no names file)."""
    values = [int(v) for s in scans for v in s.values if v != ignore_index and v >= 0]
    return [f"class_{i}" for i in range(max(values, default=0) + 1)]


def check_class_names(class_names: list[str], source) -> None:
    """At least 2 distinct names (background plus one class)."""
    if len(class_names) < 2:
        raise UserError(
            f"{source}: {len(class_names)} class(es) {list(class_names)}; semantic masks need at least 2 "
            "(e.g. background and one object class). Fix: list the classes in classes.txt (line i names "
            "mask value i), or check that the masks hold more than one value."
        )
    dupes = sorted({n for n in class_names if class_names.count(n) > 1})
    if dupes:
        raise UserError(f"{source}: class name(s) {dupes} listed twice. Fix: make the names unique.")


def assemble_mask_splits(
    class_names: list[str] | None,
    tagged: dict[str, list[MaskSample]],
    *,
    source: str | Path,
    val_fraction: float,
    seed: int,
    on_bad_image: str,
    ignore_index: int = IGNORE_INDEX,
    palette=None,
) -> MaskSplits:
    """Check every mask, drop unreadable images, then split train into train/val when no val was given.

    Args:
        class_names: Names, mask value ``i`` = ``class_names[i]``; ``None``: ``class_<i>`` up to the
            largest value found.
        tagged: Samples under ``"train"``, ``"val"``, ``"test"`` (any may be missing).
        source: Dataset root or file, for messages.
        val_fraction: Used only when ``tagged`` has no val samples.
        seed: Seed of that split.
        on_bad_image: ``"skip"`` or ``"error"`` for unreadable images.
        ignore_index: Mask value of pixels to ignore.
        palette: Class colours for RGB masks (and for written masks).

    Returns:
        The checked splits, with the training pixels per class.
    """
    check_val_fraction(val_fraction)
    check_on_bad_image(on_bad_image)
    palette = check_palette(palette)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
        raise UserError(f"data.ignore_index must be an integer >= 0, got {ignore_index!r}. Fix: e.g. 255.")
    names = ("train", "val", "test")
    everything = [s for name in names for s in tagged.get(name, [])]
    good, skipped = drop_unreadable(everything, on_bad_image=on_bad_image)
    try:
        scans = scan_masks(good, palette)
    except ImageLoadError as err:
        raise UserError(str(err)) from err
    class_names = list(class_names) if class_names else class_names_for(scans, ignore_index)
    check_class_names(class_names, source)
    if palette is not None and len(palette) != len(class_names):
        raise UserError(
            f"data.palette lists {len(palette)} colours for {len(class_names)} classes {class_names}. "
            "Fix: give one colour per class, in class order."
        )
    check_values(scans, len(class_names), ignore_index, source)
    good_ids = {id(s) for s in good}
    parts = {name: [s for s in tagged.get(name, []) if id(s) in good_ids] for name in names}
    if not parts["train"]:
        raise UserError(f"{source}: the training split holds no readable images. Fix: add training images.")
    if not parts["val"]:
        log.info(
            "%s: no validation split given; holding out %.0f%% of train (seed %d).",
            source,
            100 * val_fraction,
            seed,
        )
        parts["train"], parts["val"] = random_val_split(parts["train"], val_fraction=val_fraction, seed=seed)
    train_ids = {id(s) for s in parts["train"]}
    pixels = np.zeros(len(class_names), np.int64)
    for scan in scans:
        if id(scan.sample) in train_ids:
            keep = (scan.values >= 0) & (scan.values < len(class_names))
            np.add.at(pixels, scan.values[keep], scan.counts[keep])
    empty = [n for n, c in zip(class_names, pixels) if c == 0]
    if empty:
        log.warning(
            "%s: class(es) %s have no training pixels; the model can never learn them.", source, empty
        )
    return MaskSplits(
        class_names,
        parts["train"],
        parts["val"],
        parts["test"],
        skipped,
        ignore_index,
        palette,
        [int(c) for c in pixels],
    )
