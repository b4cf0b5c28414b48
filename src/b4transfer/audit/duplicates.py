"""Exact duplicates (same bytes: a file hash) and near-duplicates (cosine similarity of pooled backbone
embeddings), within a split and across splits (leakage)."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["exact_groups", "file_hash", "file_hashes", "near_pairs"]

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


def near_pairs(
    embeddings: np.ndarray,
    *,
    threshold: float,
    exclude: set[tuple[int, int]] | None = None,
    block: int = 1024,
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)``, ``i < j``, of standardised embeddings with a cosine >= ``threshold``.

    Each feature is standardised over the set first (mean 0, variance 1): pooled features of any two
    images share a large common component (all positive after the activation) and a few high-variance
    features, which would make every pair look alike. Measured on the planted set of the tests (five
    random initialisations): copies >= 0.98, distinct images <= 0.96 (centring alone: up to 0.985).

    Args:
        embeddings: ``(N, C)`` pooled backbone features.
        threshold: Cosine similarity from which two images count as near-duplicates.
        exclude: Pairs already known (e.g. exact duplicates), left out.
        block: Rows compared at once (memory: ``block * N`` floats).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if len(x) < 2:
        return []
    x = (x - x.mean(0, keepdims=True)) / (x.std(0, keepdims=True) + 1e-6)
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    exclude = exclude or set()
    pairs = []
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x.T  # (B, N)
        rows, cols = np.nonzero(sims >= threshold)
        for r, j in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < j and (i, j) not in exclude:
                pairs.append((i, j, float(sims[r, j])))
    return sorted(pairs, key=lambda p: -p[2])
