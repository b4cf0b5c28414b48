"""A generated image set with planted problems, for the audit's recall / precision (tests and
docs/studies/audit.md).

Three colour classes; every image is the class colour blended with its own random texture (so no two
images look alike, yet the colour gives the class away). Planted: exact copies of train images in val
(leakage), resized + JPEG re-encoded copies (near-duplicates, half of them in val), and ~5 % of the
train images moved to another class's folder (flipped labels).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"red": (200, 50, 50), "green": (50, 180, 70), "blue": (50, 70, 200)}


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = (rng.random((5, 5, 3)) * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle, freq = rng.uniform(0, np.pi), rng.uniform(1, 5)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    return big * (0.5 + 0.5 * stripes[..., None])


def photo_like(rng: np.random.Generator, size: int = 160) -> Image.Image:
    """A photo-like picture: colour noise with a steep (1/f^1.5) amplitude spectrum (smooth regions,
    edges at every scale) and a few soft-edged blobs on it."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    amplitude = np.maximum(np.hypot(fx, fy), 1.0 / size) ** -1.5
    channels = []
    for _ in range(3):
        phase = np.exp(2j * np.pi * rng.random((size, size)))
        field = np.real(np.fft.ifft2(amplitude * phase))
        channels.append((field - field.mean()) / field.std())
    mix = rng.normal(0, 1, (3, 3)) * 0.4 + np.eye(3)  # correlated channels, as in photos
    pixels = 128 + 40 * np.tensordot(np.stack(channels, -1), mix, axes=([2], [1]))
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(3):
        cy, cx, r = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size, rng.uniform(0.08, 0.2) * size
        alpha = np.clip((r - np.hypot(yy - cy, xx - cx)) / 3, 0, 1)[..., None]
        pixels = (1 - alpha) * pixels + alpha * rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


COLOUR_WEIGHT = 0.55


def render(colour, rng: np.random.Generator, size: int) -> Image.Image:
    w = COLOUR_WEIGHT
    pixels = w * np.array(colour)[None, None] + (1 - w) * texture(rng, size)
    pixels += rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@dataclass
class Planted:
    root: Path
    exact: list[tuple[Path, Path]] = field(default_factory=list)  # (train original, val copy)
    near: list[tuple[Path, Path]] = field(default_factory=list)  # (original, resized/re-encoded copy)
    flipped: list[Path] = field(default_factory=list)  # moved to another class's folder


def make_planted(
    root: Path,
    *,
    train: int = 30,
    val: int = 10,
    size: int = 48,
    n_exact: int = 4,
    n_near: int = 4,
    flip_share: float = 0.05,
    seed: int = 0,
) -> Planted:
    rng = np.random.default_rng(seed)
    out = Planted(root)
    files: dict[str, list[Path]] = {}
    for split, count in (("train", train), ("val", val)):
        for name, colour in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                path = folder / f"{i:03d}.png"
                render(colour, rng, size).save(path)
                files.setdefault(split, []).append(path)
    pool = list(rng.permutation(files["train"]))
    for k in range(n_exact):
        src = Path(pool.pop())
        dst = root / "val" / src.parent.name / f"copy{k}.png"
        shutil.copyfile(src, dst)
        out.exact.append((src, dst))
    for k in range(n_near):
        src = Path(pool.pop())
        split = "val" if k % 2 else "train"
        dst = root / split / src.parent.name / f"resized{k}.jpg"
        image = Image.open(src).convert("RGB")
        image.resize((int(size * 1.3), int(size * 1.3)), Image.BICUBIC).save(dst, quality=85)
        out.near.append((src, dst))
    n_flip = max(1, round(flip_share * len(files["train"])))
    names = list(CLASSES)
    for k in range(n_flip):
        src = Path(pool.pop())
        other = names[(names.index(src.parent.name) + 1 + k % 2) % len(names)]
        dst = root / "train" / other / f"flipped{k}.png"
        src.rename(dst)
        out.flipped.append(dst)
    return out


def scores(found: set, planted: set) -> dict[str, float]:
    """Recall and precision of ``found`` against ``planted``."""
    hits = len(found & planted)
    return {
        "recall": hits / len(planted) if planted else 1.0,
        "precision": hits / len(found) if found else 1.0,
        "planted": len(planted),
        "found": len(found),
    }
