"""Exact duplicates (same bytes: a file hash) and near-duplicates (perceptual-hash distance, cosine
similarity of pooled backbone embeddings), within a split and across splits (leakage)."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = [
    "NORMALISATIONS",
    "exact_groups",
    "file_hash",
    "file_hashes",
    "hash_pairs",
    "near_duplicates",
    "near_pairs",
    "normalised",
]

_CHUNK = 1 << 20


def file_hash(path: str | Path) -> str:
    """BLAKE2b digest of the file's bytes (identical files, whatever their names, hash alike)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(paths: Sequence[Path], *, threads: int | None = None) -> list[str]:
    """:func:`file_hash` of every path (threads: reading is I/O bound)."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(file_hash, paths))


def exact_groups(hashes: Sequence[str]) -> list[list[int]]:
    """Indices of the items sharing a hash: one group per duplicated content (groups of two or more)."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        by_hash[h].append(i)
    return [g for g in by_hash.values() if len(g) > 1]


def _similar(x: np.ndarray, threshold: float, exclude: set, block: int) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, x_i . x_j)``, ``i < j``, with a dot product >= ``threshold``, not in ``exclude``."""
    pairs = []
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x.T  # (B, N)
        rows, cols = np.nonzero(sims >= threshold)
        for r, j in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < j and (i, j) not in exclude:
                pairs.append((i, j, float(sims[r, j])))
    return pairs


NORMALISATIONS = ("none", "centre", "standardise")


def normalised(embeddings: np.ndarray, normalisation: str = "none") -> np.ndarray:
    """Unit-length rows of ``embeddings``: as they are (``none``), each feature centred over the set
    (``centre``) or centred and scaled to variance 1 (``standardise``) first."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; one of {NORMALISATIONS}")
    x = np.asarray(embeddings, dtype=np.float32)
    if normalisation != "none" and len(x):
        x = x - x.mean(0, keepdims=True)
        if normalisation == "standardise":
            x = x / (x.std(0, keepdims=True) + 1e-6)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def near_pairs(
    embeddings: np.ndarray,
    *,
    threshold: float,
    exclude: set[tuple[int, int]] | None = None,
    normalisation: str = "standardise",
    block: int = 1024,
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)``, ``i < j``, of embeddings with a cosine similarity >= ``threshold``,
    most similar first.

    Args:
        embeddings: ``(N, C)`` pooled backbone features.
        threshold: Cosine similarity from which two images count as near-duplicates.
        exclude: Pairs already known (e.g. exact duplicates), left out.
        normalisation: See :func:`normalised`. ``standardise`` (the default): pooled features of any two
            images share a large common component and a few high-variance features; measured
            (``scripts/audit_near_duplicates_study.py``), raw or centred cosines put different images
            above the copies on the generated set, standardised ones did not (docs/guides/audit.md).
        block: Rows compared at once (memory: ``block * N`` floats).
    """
    x = normalised(embeddings, normalisation)
    if len(x) < 2:
        return []
    return sorted(_similar(x, threshold, exclude or set(), block), key=lambda p: -p[2])


def hash_pairs(
    hashes: np.ndarray,
    *,
    max_distance: int,
    exclude: set[tuple[int, int]] | None = None,
    block: int = 1024,
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, hamming distance)``, ``i < j``, of bit hashes differing in at most
    ``max_distance`` bits, closest first.

    Args:
        hashes: ``(N, B)`` bools (:func:`b4transfer.audit.phash.image_hashes`).
        max_distance: Bits two near-duplicates may differ in.
        exclude: Pairs already known, left out.
        block: Rows compared at once.
    """
    if len(hashes) < 2:
        return []
    signs = np.where(np.asarray(hashes, dtype=bool), 1.0, -1.0).astype(np.float32)
    bits = signs.shape[1]  # dot = bits - 2 * distance
    found = _similar(signs, bits - 2 * max_distance - 0.5, exclude or set(), block)
    return sorted(((i, j, round((bits - d) / 2)) for i, j, d in found), key=lambda p: p[2])


def near_duplicates(
    *,
    hashes: np.ndarray | None,
    max_distance: int | None,
    embeddings: np.ndarray | None,
    threshold: float,
    exclude: set[tuple[int, int]] | None = None,
) -> list[dict]:
    """Pairs found by either finder: perceptual hashes within ``max_distance`` bits (resized and
    re-encoded copies) or standardised embeddings with a cosine >= ``threshold`` (what the backbone
    sees as one picture). Each pair carries both scores and the finder(s) that found it; pairs both
    found come first, then by hash distance, then by cosine.

    Returns:
        ``[{"i", "j", "method": "hash" | "embedding" | "hash+embedding", "hash_distance", "cosine"}]``
        (a score is ``None`` when its input is absent).
    """
    by: dict[tuple[int, int], set[str]] = {}
    if hashes is not None and max_distance is not None:
        for i, j, _ in hash_pairs(hashes, max_distance=max_distance, exclude=exclude):
            by.setdefault((i, j), set()).add("hash")
    if embeddings is not None:
        for i, j, _ in near_pairs(embeddings, threshold=threshold, exclude=exclude):
            by.setdefault((i, j), set()).add("embedding")
    x = normalised(embeddings, "standardise") if embeddings is not None and len(by) else None
    signs = np.where(hashes, 1, -1).astype(np.int32) if hashes is not None and len(by) else None
    out = []
    for (i, j), methods in by.items():
        distance = int((len(signs[i]) - signs[i] @ signs[j]) // 2) if signs is not None else None
        cosine = round(float(x[i] @ x[j]), 4) if x is not None else None
        method = "+".join(m for m in ("hash", "embedding") if m in methods)
        out.append({"i": i, "j": j, "method": method, "hash_distance": distance, "cosine": cosine})
    return sorted(
        out,
        key=lambda p: (-len(by[p["i"], p["j"]]), p["hash_distance"] or 0, -(p["cosine"] or 0)),
    )
