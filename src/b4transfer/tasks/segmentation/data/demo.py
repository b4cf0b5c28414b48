"""A generated, deterministic semantic-mask demo set: shapes on textured backgrounds, with exact masks.

``ensure_demo_masks()`` writes once (atomically, ``.complete`` marker last) the ``seg_folder`` layout::

    root/classes.txt                       background, circle, square, triangle
    root/images/{train,val}/000000.png     root/masks/{train,val}/000000.png   (8-bit class indices)

read back by :func:`b4transfer.tasks.segmentation.data.folder.seg_folder_splits` like users' data. Each
image (sides between ``image_size`` and 1.3x that) holds 1 to 3 shapes — circle, square, triangle — in a
class-typical hue family with random size, position, rotation and colour jitter; shapes may overlap (the later
one is on top, in the image and in the mask). A mask pixel is a shape's class where the anti-aliased
shape covers at least half of the pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from b4transfer.data.demo import (
    cache_root,
    check_int_args,
    ensure_generated,
    hsv255,
    shape_polygon,
    textured_background,
)
from b4transfer.tasks.segmentation.data.masks import MaskSplits

DEMO_MASK_CLASSES = ("background", "circle", "square", "triangle")
DEMO_MASK_VERSION = "v1"
_SUPERSAMPLE = 2


def default_demo_masks_root(image_size: int, train_images: int, val_images: int, seed: int) -> Path:
    """:func:`~b4transfer.data.demo.cache_root` / ``demo-masks-v1-<size>-<n>-<n>-<seed>``."""
    return cache_root() / f"demo-masks-{DEMO_MASK_VERSION}-{image_size}-{train_images}-{val_images}-{seed}"


def shape_coverage(name: str, cx: float, cy: float, r: float, theta: float, width: int, height: int):
    """``(height, width)`` anti-aliased coverage in 0..1 of one shape (centre and radius in pixels)."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        draw.ellipse((s * (cx - r), s * (cy - r), s * (cx + r), s * (cy + r)), fill=255)
    else:
        draw.polygon(shape_polygon(name, s * cx, s * cy, s * r, theta), fill=255)
    return np.asarray(canvas.resize((width, height), Image.BOX), dtype=np.float64) / 255.0


def render_mask_image(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, Image.Image]:
    """One demo image and its mask (``L`` PNG of class indices, 0 = background)."""
    width, height = (int(v) for v in rng.integers(image_size, int(1.3 * image_size) + 1, size=2))
    pixels = textured_background(rng, max(width, height))[:height, :width]
    mask = np.zeros((height, width), np.uint8)
    shapes = len(DEMO_MASK_CLASSES) - 1
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(shapes))
        r = image_size * rng.uniform(0.1, 0.22)
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        cover = shape_coverage(
            DEMO_MASK_CLASSES[cls + 1], cx, cy, r, rng.uniform(0, 2 * np.pi), width, height
        )
        colour = hsv255(cls / shapes + rng.uniform(-0.05, 0.05), rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
        pixels = pixels * (1 - cover[..., None]) + colour * cover[..., None]
        mask[cover >= 0.5] = cls + 1
    pixels += rng.normal(0, rng.uniform(3, 10), size=pixels.shape)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    return image, Image.fromarray(mask, mode="L")


def ensure_demo_masks(
    root: str | Path | None = None,
    *,
    image_size: int = 96,
    train_images: int = 200,
    val_images: int = 50,
    seed: int = 0,
) -> Path:
    """Generate the demo set once (deterministically) and return its folder.

    Args:
        root: Where to write it; ``None``: see :func:`default_demo_masks_root`.
        image_size: Smallest image side in pixels (sides vary up to 1.3x).
        train_images: Number of training images.
        val_images: Number of validation images.
        seed: Seed of the generator; the same arguments give the same files.
    """
    check_int_args(
        ("image_size", image_size, 32), ("train_images", train_images, 1), ("val_images", val_images, 1)
    )
    if root is None:
        root = default_demo_masks_root(image_size, train_images, val_images, seed)
    info = {
        "version": DEMO_MASK_VERSION,
        "classes": list(DEMO_MASK_CLASSES),
        "image_size": image_size,
        "train": train_images,
        "val": val_images,
        "seed": seed,
    }

    def write(folder: Path) -> None:
        (folder / "classes.txt").write_text("\n".join(DEMO_MASK_CLASSES) + "\n")
        for split_id, (split, count) in enumerate((("train", train_images), ("val", val_images))):
            for sub in ("images", "masks"):
                (folder / sub / split).mkdir(parents=True)
            for i in range(count):
                image, mask = render_mask_image(np.random.default_rng([seed, split_id, i]), image_size)
                image.save(folder / "images" / split / f"{i:06d}.png")
                mask.save(folder / "masks" / split / f"{i:06d}.png")

    return ensure_generated(Path(root).expanduser(), info, write)


def demo_mask_splits(
    root: str | Path | None = None,
    *,
    image_size: int = 96,
    train_images: int = 200,
    val_images: int = 50,
    seed: int = 0,
) -> MaskSplits:
    """The generated demo (written once to a cache dir), read through the ``seg_folder`` loader."""
    from b4transfer.tasks.segmentation.data.folder import seg_folder_splits

    folder = ensure_demo_masks(
        root, image_size=image_size, train_images=train_images, val_images=val_images, seed=seed
    )
    return seg_folder_splits(folder)
