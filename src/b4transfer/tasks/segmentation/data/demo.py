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

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from b4transfer.data.demo import DemoSet, class_colour, noisy_image, paint, random_canvas, shape_coverage
from b4transfer.tasks.segmentation.data.masks import MaskSplits

DEMO_MASK_CLASSES = ("background", "circle", "square", "triangle")
DEMO_MASK_VERSION = "v1"


def render_mask_image(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, Image.Image]:
    """One demo image and its mask (``L`` PNG of class indices, 0 = background)."""
    width, height, pixels = random_canvas(rng, image_size, 1.3)
    mask = np.zeros((height, width), np.uint8)
    shapes = len(DEMO_MASK_CLASSES) - 1
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(shapes))
        r = image_size * rng.uniform(0.1, 0.22)
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        cover = shape_coverage(
            DEMO_MASK_CLASSES[cls + 1], cx, cy, r, rng.uniform(0, 2 * np.pi), width, height
        )
        pixels = paint(pixels, class_colour(rng, cls, shapes), cover)
        mask[cover >= 0.5] = cls + 1
    return noisy_image(rng, pixels), Image.fromarray(mask, mode="L")


def _write_split(folder: Path, split: str, rngs: Iterator[np.random.Generator], image_size: int) -> None:
    """``images/<split>/000000.png ...`` and the masks of the same names in ``masks/<split>/``."""
    for sub in ("images", "masks"):
        (folder / sub / split).mkdir(parents=True)
    for i, rng in enumerate(rngs):
        image, mask = render_mask_image(rng, image_size)
        image.save(folder / "images" / split / f"{i:06d}.png")
        mask.save(folder / "masks" / split / f"{i:06d}.png")


MASK_DEMO = DemoSet(
    name="demo-masks",
    version=DEMO_MASK_VERSION,
    classes=DEMO_MASK_CLASSES,
    defaults={"image_size": 96, "train_images": 200, "val_images": 50, "seed": 0},
    min_image_size=32,
    write_split=_write_split,
    files={"classes.txt": "\n".join(DEMO_MASK_CLASSES) + "\n"},
)


def ensure_demo_masks(root: str | Path | None = None, **sizes: int) -> Path:
    """Generate :data:`MASK_DEMO` once (:meth:`~b4transfer.data.demo.DemoSet.ensure`; ``image_size`` is the
    smallest side, sides vary up to 1.3x) and return its folder, in the ``seg_folder`` layout."""
    return MASK_DEMO.ensure(root, **sizes)


def demo_mask_splits(root: str | Path | None = None, **sizes: int) -> MaskSplits:
    """The generated demo (written once to a cache dir, ``sizes`` as for :func:`ensure_demo_masks`), read
    through the ``seg_folder`` loader."""
    from b4transfer.tasks.segmentation.data.folder import seg_folder_splits

    return seg_folder_splits(ensure_demo_masks(root, **sizes))
