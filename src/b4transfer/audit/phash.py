"""Perceptual hashes of image files (pHash, dHash), for near-duplicates that are resized, re-encoded or
lightly cropped copies: small in code (PIL + NumPy), no extra dependency.

pHash (as in Zauner 2010 and the ``imagehash`` package): the grey image at ``4 * size`` px square, its
2-D DCT, the ``size x size`` lowest frequencies, each bit "above their median". dHash: the grey image at
``(size + 1) x size`` px, each bit "brighter than the pixel to its right". Two copies of one picture
differ in a few bits; two different pictures in about half of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

from b4transfer.data.images import load_rgb

__all__ = ["KINDS", "dhash", "image_hashes", "phash"]


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x`` is the DCT of the column ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def _grey(image: Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(image.convert("L").resize((width, height), Image.LANCZOS), dtype=np.float64)


def phash(image: Image.Image, size: int = 8) -> np.ndarray:
    """``size * size`` bits (bool): the low DCT frequencies of the ``4 * size`` px grey image above
    their median."""
    n = 4 * size
    d = _dct_matrix(n)
    low = (d @ _grey(image, n, n) @ d.T)[:size, :size].ravel()
    return low > np.median(low)


def dhash(image: Image.Image, size: int = 8) -> np.ndarray:
    """``size * size`` bits (bool): each pixel of the ``(size + 1) x size`` grey image brighter than
    its right neighbour."""
    pixels = _grey(image, size + 1, size)
    return (pixels[:, 1:] > pixels[:, :-1]).ravel()


KINDS = {"phash": phash, "dhash": dhash}


def _file_hash(path: Path, kind: str, size: int) -> np.ndarray:
    draft = (8 * size, 8 * size)  # JPEGs decode at a reduced scale (still >= 8x the hash grid)
    return KINDS[kind](load_rgb(path, draft_size=draft), size)


def image_hashes(
    paths: Sequence[Path], *, kind: str = "phash", size: int = 8, threads: int | None = None
) -> np.ndarray:
    """``(N, size * size)`` bool hashes of the image files (decoding in threads; PIL releases the GIL).

    Raises:
        ImageLoadError: A file cannot be decoded (names it).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown hash kind {kind!r}; one of {sorted(KINDS)}")
    threads = threads or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        rows = list(pool.map(partial(_file_hash, kind=kind, size=size), paths))
    return np.stack(rows) if rows else np.zeros((0, size * size), dtype=bool)
