"""Generated benchmark inputs: demo-shape images in memory, and photo-sized JPEG files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from b4transfer.data.demo import DEMO_CLASSES, render_demo_image
from b4transfer.data.splits import DatasetSplits, Sample


def demo_batch(n: int, size: int, *, mean, std, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` demo images (6 shape classes, in turn) as a normalised ``(n, 3, size, size)`` tensor + labels."""
    rng = np.random.default_rng(seed)
    labels = torch.arange(n) % len(DEMO_CLASSES)
    arrays = [np.asarray(render_demo_image(int(c), rng, size), dtype=np.float32) / 255.0 for c in labels]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(), labels


def demo_uint8(n: int, size: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of :func:`demo_batch` as a ``uint8`` ``(n, 3, size, size)`` tensor (what the prediction
    loader gives) + labels; ``normalize_uint8`` of it is :func:`demo_batch`'s tensor."""
    rng = np.random.default_rng(seed)
    labels = torch.arange(n) % len(DEMO_CLASSES)
    arrays = [np.asarray(render_demo_image(int(c), rng, size), dtype=np.uint8) for c in labels]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), labels


def photo_jpegs(folder: Path, n: int, *, size: tuple[int, int] = (1632, 1224), seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs (demo shapes upscaled, plus sensor-like noise), quality 90.

    2 MP (1632x1224) by default; the noise makes the files about as large as camera photos
    of that size (~0.5-0.9 MB), which is what the JPEG decoder's cost depends on.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = render_demo_image(i % len(DEMO_CLASSES), rng, max(size) // 4).resize(size, Image.BICUBIC)
        noisy = np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (size[1], size[0], 3))
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def demo_files(folder: Path, n_train: int, n_val: int, *, size: int, seed: int = 0) -> DatasetSplits:
    """Demo-shape JPEG files on disk as :class:`DatasetSplits` (for datamodule-level benchmarks)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n_train + n_val):
        label = i % len(DEMO_CLASSES)
        path = folder / f"{i:04d}.jpg"
        render_demo_image(label, rng, size).save(path, quality=90)
        samples.append(Sample(path, label))
    return DatasetSplits(list(DEMO_CLASSES), samples[:n_train], samples[n_train:])
