"""Semantic masks: samples and splits, mask decoding, and the start-up checks every mask reader shares.

A reader (``seg_folder``, ``voc_seg``, COCO rendered to semantic masks, the generated demo) turns its
source into :class:`MaskSample` lists — an image and its mask: a PNG file of class indices (``L``,
palette ``P`` or 16-bit), an RGB PNG with a colour per class (``data.palette``), or an object that
renders the mask (``render(height, width)``, COCO polygons) — and calls :func:`assemble_mask_splits`.

That decodes every mask once at start-up (threads) and refuses, before any training step, a mask whose
size differs from its image, values that are neither a class nor the ignore index, and RGB masks with no
palette mapping, lossy (JPEG) mask files, images too large to decode, and an ignore index that is a class,
each naming the file, the value and the fix. Binary masks of 0 and 255 with two classes are read as
0 and 1 (logged): 255 would otherwise be the ignore index and the object never learned. It keeps each
mask's pixel counts (so ``loss.class_weights=auto`` and the summary's shares follow the training split,
k-fold folds included), drops unreadable images (skipped and counted, as for classification) and
carves a seeded validation split when the source has none.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from b4transfer.data.images import ImageLoadError, upright_size
from b4transfer.data.splits import (
    DEFAULT_CHECK_THREADS,
    SplitOptions,
    Splits,
    hold_out_val,
    readable_parts,
    shown,
)
from b4transfer.errors import UserError
from b4transfer.tasks.segmentation.data.mask_files import check_palette, mask_size, read_mask, refuse_lossy

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
__all__ = [  # read_mask and check_palette live in mask_files; imported from here by the readers
    "IGNORE_INDEX",
    "MaskSample",
    "MaskSplits",
    "assemble_mask_splits",
    "check_palette",
    "default_palette",
    "read_mask",
]


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
        pixels: ``(values, counts)``: the pixels of each class value in the mask (set by the scan).
    """

    path: Path
    mask: Path | Any
    size: tuple[int, int] | None = None
    pixels: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


@dataclass
class MaskSplits(Splits[MaskSample]):
    """Everything a semantic-mask data module needs: :class:`~b4transfer.data.splits.Splits` of
    :class:`MaskSample` (mask value ``i`` means ``class_names[i]``), and

    Args:
        skipped: ``(path, reason)`` for every unreadable image left out.
        ignore_index: The mask value that marks pixels to ignore (borders, crowds, padding).
        palette: RGB colour of each class (for RGB masks and written masks); ``None``: the default one.
        binary: The masks hold 0 and 255 for two classes: 255 is read as class 1.
    """

    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX
    palette: list[tuple[int, int, int]] | None = None
    binary: bool = False

    multi_label = False

    @property
    def class_pixels(self) -> list[int]:
        """Training pixels per class, summed over the current ``train`` samples (a k-fold fold's own)."""
        pixels = np.zeros(self.num_classes, np.int64)
        for sample in self.train:
            if sample.pixels is not None:
                values, counts = sample.pixels
                keep = (values >= 0) & (values < self.num_classes)
                np.add.at(pixels, values[keep], counts[keep])
        return [int(c) for c in pixels]


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


def _scan_one(sample: MaskSample, palette) -> MaskSample:
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
        sample.pixels = (np.asarray(values, np.int64), np.asarray(counts, np.int64))
    else:
        sample.pixels = np.unique(read_mask(sample.mask, palette, size=sample.size), return_counts=True)
    return sample


def scan_masks(samples: list[MaskSample], palette=None, threads: int = DEFAULT_CHECK_THREADS) -> None:
    """Decode every mask once (threads): sizes against the images, each sample's ``pixels`` (distinct
    values and their counts). JPEG masks are refused first, all of them named at once."""
    refuse_lossy([s.mask for s in samples])
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(lambda s: _scan_one(s, palette), samples))


def _is_file(mask) -> bool:
    return isinstance(mask, (str, Path))


def binary_masks(samples: list[MaskSample], class_names: list[str] | None) -> bool:
    """Whether the masks are 0/255 object masks: files holding only 0 and 255 (255 somewhere), with two
    classes named (or none). Read with 255 as the ignore index, the object class would have no pixel."""
    if (class_names is not None and len(class_names) != 2) or not samples:
        return False
    if not all(_is_file(s.mask) for s in samples):  # rendered masks (COCO): 255 is a crowd region
        return False
    values = set()
    for s in samples:
        values.update(int(v) for v in s.pixels[0])
    return 255 in values and values <= {0, 255}


def read_as_binary(samples: list[MaskSample], class_names: list[str] | None, source) -> bool:
    """Count 255 as class 1 in 0/255 object masks (:func:`binary_masks`), with a warning; whether it did."""
    if not binary_masks(samples, class_names):
        return False
    for s in samples:
        s.pixels = (np.where(s.pixels[0] == 255, 1, s.pixels[0]), s.pixels[1])
    names = list(class_names or ["class_0", "class_1"])
    log.warning(
        "%s: the masks hold only the values 0 and 255 and there are 2 classes %s: reading them as binary "
        "masks, 255 as class 1 (%r), not as the ignore index.",
        source,
        names,
        names[1],
    )
    return True


def check_ignore_index(ignore_index: int, class_names: list[str], source) -> None:
    """Refuse an ignore index that is a class: that class would leave the loss and the metrics."""
    if ignore_index < len(class_names):
        raise UserError(
            f"{source}: data.ignore_index={ignore_index} is class {ignore_index} "
            f"({class_names[ignore_index]!r}) of the {len(class_names)} classes {shown(list(class_names))}; "
            "its pixels would be left out of the loss and the metrics. Fix: set data.ignore_index to a "
            f"value no class uses (>= {len(class_names)}; 255 by default)."
        )


def check_values(samples: list[MaskSample], num_classes: int, ignore_index: int, source) -> None:
    """Refuse mask values that are neither a class ``0..num_classes-1`` nor ``ignore_index``."""
    bad = []
    for sample in samples:
        wrong = [int(v) for v in sample.pixels[0] if not (0 <= v < num_classes or v == ignore_index)]
        if wrong:
            shown_values = ["colour not in data.palette" if v == -1 else v for v in wrong[:6]]
            bad.append(f"{sample.mask}: {shown_values}")
    if bad:
        raise UserError(
            f"{source}: {len(bad)} mask(s) hold values that are neither a class "
            f"(0..{num_classes - 1}) nor the "
            f"ignore index {ignore_index} ({shown(bad)}). Fix: correct those masks, list the missing classes "
            "in classes.txt, or set data.ignore_index to the value that marks pixels to ignore."
        )


def class_names_for(samples: list[MaskSample], ignore_index: int) -> list[str]:
    """``class_<i>`` for every value up to the largest found (no names file)."""
    values = [int(v) for s in samples for v in s.pixels[0] if v != ignore_index and v >= 0]
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
    options: SplitOptions,
    ignore_index: int = IGNORE_INDEX,
    palette=None,
) -> MaskSplits:
    """Check every mask, drop unreadable images, then split train into train/val when no val was given.

    Args:
        class_names: Names, mask value ``i`` = ``class_names[i]``; ``None``: ``class_<i>`` up to the
            largest value found.
        tagged: Samples under ``"train"``, ``"val"``, ``"test"`` (any may be missing).
        source: Dataset root or file, for messages.
        options: The hold-out (of random images) and the unreadable-image policy.
        ignore_index: Mask value of pixels to ignore.
        palette: Class colours for RGB masks (and for written masks).

    Returns:
        The checked splits (each sample's pixel counts kept for :attr:`MaskSplits.class_pixels`).
    """
    palette = check_palette(palette)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
        raise UserError(f"data.ignore_index must be an integer >= 0, got {ignore_index!r}. Fix: e.g. 255.")
    parts, skipped = readable_parts(tagged, options)
    good = [s for part in parts.values() for s in part]
    try:
        scan_masks(good, palette)
    except ImageLoadError as err:
        raise UserError(str(err)) from err
    binary = read_as_binary(good, class_names, source)
    class_names = list(class_names) if class_names else class_names_for(good, ignore_index)
    check_class_names(class_names, source)
    if palette is not None and len(palette) != len(class_names):
        raise UserError(
            f"data.palette lists {len(palette)} colours for {len(class_names)} classes {class_names}. "
            "Fix: give one colour per class, in class order."
        )
    check_ignore_index(ignore_index, class_names, source)
    check_values(good, len(class_names), ignore_index, source)
    if not parts["train"]:
        raise UserError(f"{source}: the training split holds no readable images. Fix: add training images.")
    hold_out_val(parts, options, source=source, of="train")
    splits = MaskSplits(
        class_names, parts["train"], parts["val"], parts["test"], skipped, ignore_index, palette, binary
    )
    empty = [n for n, c in zip(class_names, splits.class_pixels) if c == 0]
    if empty:
        log.warning(
            "%s: class(es) %s have no training pixels; the model can never learn them.", source, empty
        )
    return splits
