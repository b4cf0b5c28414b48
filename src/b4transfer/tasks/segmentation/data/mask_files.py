"""Mask files: reading a PNG of class indices (or of class colours, with a palette) into an array, and the
refusals of files that cannot be masks — unreadable, too large to decode, of another PIL mode, RGB with no
palette, or JPEG (lossy: its artefacts would each become a class) — each naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from b4transfer.data.splits import shown
from b4transfer.errors import UserError

INDEX_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I", "1")
COLOUR_MODES = ("RGB", "RGBA")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".jpe")
_MASK_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def check_palette(palette, where: str = "data.palette") -> list[tuple[int, int, int]] | None:
    """``[[r, g, b], ...]`` (one per class; lists, or Hydra's list nodes from the command line) as tuples;
    ``None`` passes."""
    if palette is None:
        return None
    if isinstance(palette, (ListConfig, DictConfig)):  # data.palette=[[0,0,0],[255,0,0]] on the command line
        palette = OmegaConf.to_container(palette, resolve=True)
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
    mask: Path | Any, palette: list[tuple[int, int, int]] | None = None, *, size=None, binary: bool = False
) -> np.ndarray:
    """A mask as an ``(H, W)`` int64 array of class indices.

    Args:
        mask: A PNG of indices (``L``, ``P``, 16-bit) or of colours (``RGB``, mapped by ``palette``), or a
            :class:`MaskRenderer` (rendered at ``size=(width, height)``).
        palette: Class colours for RGB masks; a colour not in it becomes ``-1`` (found by the checks).
        size: ``(width, height)`` for a renderer.
        binary: 0/255 masks of two classes (:attr:`MaskSplits.binary`): 255 becomes class 1.

    Raises:
        UserError: The file is unreadable, of another mode, or RGB with no ``palette``.
    """
    if not isinstance(mask, (str, Path)):
        return np.asarray(mask.render(size[1], size[0]), dtype=np.int64)
    indices = _read_mask_file(Path(mask), palette)
    return np.where(indices == 255, 1, indices) if binary else indices


def _unreadable(mask: Path, err: BaseException) -> UserError:
    if isinstance(err, Image.DecompressionBombError):
        return UserError(
            f"mask {mask} is too large to decode safely ({err}). Fix: save the mask at its image's size; "
            "for really huge images raise PIL.Image.MAX_IMAGE_PIXELS in your own script, or remove the pair."
        )
    return UserError(f"mask {mask} cannot be read ({err}). Fix: re-save it as a PNG, or remove the pair.")


def _read_mask_file(mask: Path, palette) -> np.ndarray:
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
    except _MASK_READ_ERRORS as err:
        if isinstance(err, UserError):
            raise
        raise _unreadable(mask, err) from err
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


_LOSSY_WHY = (
    "lossy compression blurs the class values at every edge (a 2-class mask comes back with hundreds of "
    "values, each read as a class)."
)
_LOSSY_FIX = (
    "save the masks as PNG (lossless) from their source; converting a JPEG to PNG keeps the artefacts."
)


def _lossy(mask: Path) -> UserError:
    return UserError(f"mask {mask} is a JPEG (whatever its name): {_LOSSY_WHY} Fix: {_LOSSY_FIX}")


def mask_size(mask: Path | Any) -> tuple[int, int] | None:
    """``(width, height)`` of a mask file from its header; ``None`` for a renderer (made to size).

    Raises:
        UserError: The file is unreadable, too large to decode, or a (lossy) JPEG.
    """
    if not isinstance(mask, (str, Path)):
        return None
    try:
        with Image.open(mask) as img:
            if img.format == "JPEG":
                raise _lossy(Path(mask))
            return img.size
    except _MASK_READ_ERRORS as err:
        if isinstance(err, UserError):
            raise
        raise _unreadable(Path(mask), err) from err


def refuse_lossy(masks: list) -> None:
    """Refuse masks with a JPEG name (all named at once; a JPEG under another name: :func:`mask_size`)."""
    files = [Path(m) for m in masks if isinstance(m, (str, Path))]
    lossy = [str(m) for m in files if m.suffix.lower() in LOSSY_SUFFIXES]
    if lossy:
        raise UserError(
            f"{len(lossy)} mask(s) are JPEG files ({shown(lossy)}): {_LOSSY_WHY} Fix: {_LOSSY_FIX}"
        )
