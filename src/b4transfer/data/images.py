"""Image decoding: any file PIL reads becomes an upright 8-bit RGB image, or a clear error.

Every loader in b4transfer goes through :func:`load_rgb`, so grayscale, palette, RGBA,
CMYK and 16-bit files all reach the model the same way, EXIF-rotated phone photos come
out upright, and a corrupt file raises :class:`ImageLoadError` naming the file and the fix.
:func:`check_image` is the start-up check that lets datasets skip-and-count bad files
instead of crashing mid-epoch.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from b4transfer.errors import UserError

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)

# Size JPEGs are draft-decoded at by `check_image`: the whole bit stream is still read
# (so truncation is caught) but the inverse DCT runs at 1/8 scale.
_CHECK_DRAFT_SIZE = (64, 64)
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that transpose width and height
_DECODE_ERRORS = (
    OSError,  # includes PIL.UnidentifiedImageError and "image file is truncated"
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_DEFAULT_FIX = (
    "re-save it as a PNG or JPEG, or delete it; with data.on_bad_image=skip unreadable "
    "images are skipped (and counted) at start-up"
)

# Truncated files must fail loudly at the start-up check, never load half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def images_under(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, sorted): an extension of ``IMG_EXTENSIONS`` in any
    case, hidden files (``.name``) left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")
    )


class ImageLoadError(UserError):
    """An image file that cannot be decoded.

    Args:
        path: The offending file.
        reason: What went wrong, e.g. ``"image file is truncated"``.
        fix: How the user can fix it.
    """

    def __init__(self, path: str | Path, reason: str, fix: str = _DEFAULT_FIX):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot load image {self.path}: {reason}. Fix: {fix}.")


def _reason(err: BaseException) -> str:
    """One-line, user-facing description of a decoding exception."""
    if isinstance(err, FileNotFoundError):
        return "file does not exist"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image format PIL can read (unknown or corrupt header)"
    text = " ".join(str(err).split()) or "no details"
    return f"{type(err).__name__}: {text}"


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Rotate/flip per the EXIF orientation tag (always a copy); a corrupt EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(img)
    except (*_DECODE_ERRORS, KeyError, TypeError, AttributeError):
        return img.copy()


def _scale_to_uint8(arr: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Linearly map ``arr`` to 0..255: by ``full_scale`` if given, else by its own min..max."""
    arr = arr.astype(np.float64)
    if full_scale is not None:
        out = arr * (255.0 / full_scale)
    else:
        lo, hi = float(arr.min()), float(arr.max())
        out = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale -> 8-bit L, scaled (not clipped).

    ``I;16*`` is divided by 257 (65535 -> 255). ``I`` holding values in 0..65535 (how
    some plugins expose 16-bit data) is treated as 16-bit, anything else is min-max
    scaled. ``F`` in 0..1 is multiplied by 255, in 0..255 kept, else min-max scaled.
    """
    arr = np.asarray(img)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scale: float | None = 65535.0
    elif img.mode == "I":
        scale = 65535.0 if lo >= 0 and hi <= 65535 else None
    elif lo >= 0 and hi <= 1:
        scale = 1.0
    else:
        scale = 255.0 if lo >= 0 and hi <= 255 else None
    return Image.fromarray(_scale_to_uint8(arr, scale), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to 8-bit RGB.

    Transparent pixels are composited over white (not black); high-bit-depth grayscale
    is rescaled to 0..255 instead of clipped; CMYK, palette and 1-bit images convert
    through PIL.

    Args:
        img: A loaded PIL image.

    Returns:
        An RGB image of the same size.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth_to_l(img).convert("RGB")
    if (img.mode == "P" and "transparency" in img.info) or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _apply_draft(img: Image.Image, draft_size: tuple[int, int]) -> None:
    """Ask the JPEG decoder for a reduced scale when the file is >= 2x ``draft_size``."""
    width, height = draft_size
    try:
        if img.getexif().get(_EXIF_ORIENTATION) in _SWAPS_AXES:
            width, height = height, width  # draft works on the stored (unrotated) pixels
    except _DECODE_ERRORS:
        pass
    if img.width >= 2 * width and img.height >= 2 * height:
        img.draft("RGB", (width, height))


def load_rgb(path: str | Path, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image file as an upright 8-bit RGB PIL image.

    Args:
        path: Image file of any format PIL reads.
        draft_size: ``(width, height)``; when given and the file is a JPEG at least twice
            that size in both dimensions, it is decoded at a reduced scale (still at least
            ``draft_size``), which is much faster for large photos.

    Returns:
        The decoded image, EXIF orientation applied, in mode RGB.

    Raises:
        ImageLoadError: The file is missing, truncated, or not a readable image.
    """
    try:
        with Image.open(path) as img:
            if draft_size is not None and img.format == "JPEG":
                _apply_draft(img, draft_size)
            img.load()  # multi-frame GIF/TIFF: the first frame is the image
            return to_rgb(_exif_transpose(img))
    except _DECODE_ERRORS as err:
        raise ImageLoadError(path, _reason(err)) from err


def check_image(path: str | Path) -> str | None:
    """Fully decode an image (JPEGs at a small draft scale) to find corrupt files early.

    Args:
        path: Image file to check.

    Returns:
        ``None`` if the image decodes, else a one-line reason.
    """
    try:
        load_rgb(path, draft_size=_CHECK_DRAFT_SIZE)
    except ImageLoadError as err:
        return err.reason
    return None


def upright_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`load_rgb` returns it (EXIF rotation applied), header only.

    Args:
        path: Image file.

    Returns:
        The upright size, read without decoding the pixels.

    Raises:
        ImageLoadError: The file is missing or its header is not a readable image.
    """
    return image_header(path)[1]


def image_header(path: str | Path) -> tuple[tuple[int, int], tuple[int, int], int]:
    """Stored size, upright size (as :func:`load_rgb` returns the image) and EXIF orientation (1: none).

    Raises:
        ImageLoadError: The file is missing or its header is not a readable image.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            try:
                orientation = int(img.getexif().get(_EXIF_ORIENTATION) or 1)
            except (*_DECODE_ERRORS, KeyError, TypeError, AttributeError):
                orientation = 1  # a corrupt EXIF block is ignored, as by load_rgb
    except _DECODE_ERRORS as err:
        raise ImageLoadError(path, _reason(err)) from err
    swap = orientation in _SWAPS_AXES
    return (width, height), ((height, width) if swap else (width, height)), orientation
