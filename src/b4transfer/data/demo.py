"""A generated, deterministic demo dataset of real image files: six coloured shapes.

``ensure_demo()`` writes ``root/train/<class>/0000.png ...`` and ``root/val/<class>/...``
once (atomically: a temp folder renamed into place, a ``.complete`` marker written last)
and afterwards just returns the folder. It is read back with
:func:`b4transfer.data.folder.scan_folder`, the same loader users' folders go through.

Each image is a shape (circle, square, triangle, star, cross, ring) in a class-typical
hue family, with random size, position, rotation and colour jitter, on a low-saturation
textured background (gradient, blotchy noise or stripes) plus pixel noise. Shape and hue
both carry the class, so even a small CNN trained from scratch beats chance within an
epoch or two, while the jitter keeps it from being trivially memorised.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from b4transfer.errors import UserError, UserFileExistsError

DEMO_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
DEMO_VERSION = "v1"
MARKER = ".complete"
_SIZE_KEYS = ("image_size", "train_images", "val_images", "seed")  # of a DemoSet
_SUPERSAMPLE = 2  # shapes are drawn at 2x and downsampled: anti-aliased edges


def cache_root() -> Path:
    """``$B4TRANSFER_CACHE``, else ``~/.cache/b4transfer``: generated demo sets, the image-check cache."""
    return Path(os.environ.get("B4TRANSFER_CACHE") or Path.home() / ".cache" / "b4transfer").expanduser()


def default_demo_root(image_size: int, train_per_class: int, val_per_class: int, seed: int) -> Path:
    """:func:`cache_root` / ``demo-v1-<size>-<train>-<val>-<seed>``."""
    return cache_root() / f"demo-{DEMO_VERSION}-{image_size}-{train_per_class}-{val_per_class}-{seed}"


def hsv255(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``(size, size, 3)`` float image: gradient, blotchy noise or stripes in muted colours."""
    c1, c2 = (hsv255(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.25, 0.75)) for _ in range(2))
    yy, xx = np.mgrid[0:size, 0:size] / size
    kind = rng.integers(3)
    if kind == 0:  # linear gradient at a random angle
        angle = rng.uniform(0, 2 * np.pi)
        t = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) + 0.5
    elif kind == 1:  # low-frequency blotches: coarse noise upsampled bicubically
        coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8))
        t = np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0
    else:  # soft stripes of random frequency and direction
        angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 8)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    t = np.clip(t, 0, 1)[..., None]
    return c1 * (1 - t) + c2 * t


def shape_polygon(name: str, cx: float, cy: float, r: float, theta: float) -> list[tuple[float, float]]:
    """Vertices of a shape of radius ``r`` centred at ``(cx, cy)``, rotated by ``theta``."""
    if name == "square":
        pts = [(r * np.cos(a), r * np.sin(a)) for a in np.pi / 4 + np.arange(4) * np.pi / 2]
    elif name == "triangle":
        pts = [(1.1 * r * np.cos(a), 1.1 * r * np.sin(a)) for a in np.arange(3) * 2 * np.pi / 3]
    elif name == "star":
        radii = np.where(np.arange(10) % 2 == 0, r * 1.1, r * 0.45)
        pts = [(q * np.cos(a), q * np.sin(a)) for q, a in zip(radii, np.arange(10) * np.pi / 5)]
    else:  # cross: a plus sign with arms of half-width w
        w = 0.33 * r
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r)]
        pts += [(-x, -y) for x, y in pts]
    cos, sin = np.cos(theta), np.sin(theta)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in pts]


def shape_coverage(name: str, cx: float, cy: float, r: float, theta: float, width: int, height: int):
    """``(height, width)`` anti-aliased coverage in 0..1 of one shape (centre and radius in pixels), drawn at
    ``_SUPERSAMPLE`` x and downsampled."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    box = (s * (cx - r), s * (cy - r), s * (cx + r), s * (cy + r))
    if name == "circle":
        draw.ellipse(box, fill=255)
    elif name == "ring":
        draw.ellipse(box, outline=255, width=max(2, round(0.32 * (s * r))))
    else:
        draw.polygon(shape_polygon(name, s * cx, s * cy, s * r, theta), fill=255)
    return np.asarray(canvas.resize((width, height), Image.BOX), dtype=np.float64) / 255.0


def random_canvas(rng: np.random.Generator, image_size: int, stretch: float) -> tuple[int, int, np.ndarray]:
    """``(width, height, pixels)``: a textured background whose sides are drawn from ``image_size`` to
    ``stretch`` times that."""
    width, height = (int(v) for v in rng.integers(image_size, int(stretch * image_size) + 1, size=2))
    return width, height, textured_background(rng, max(width, height))[:height, :width]


def class_colour(
    rng: np.random.Generator, index: int, count: int, *, hue_jitter: float = 0.05, min_saturation: float = 0.6
) -> np.ndarray:
    """A 0..255 RGB colour in the hue family of class ``index`` of ``count``; jittered saturation, value."""
    hue = index / count + rng.uniform(-hue_jitter, hue_jitter)
    return hsv255(hue, rng.uniform(min_saturation, 1.0), rng.uniform(0.7, 1.0))


def paint(pixels: np.ndarray, colour: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """``pixels`` with ``colour`` blended in where the 2-D ``cover`` (0..1) says."""
    return pixels * (1 - cover[..., None]) + colour * cover[..., None]


def noisy_image(rng: np.random.Generator, pixels: np.ndarray, max_noise: float = 10) -> Image.Image:
    """``pixels`` plus Gaussian noise (sigma drawn from 3 to ``max_noise``), as an 8-bit RGB image."""
    pixels = pixels + rng.normal(0, rng.uniform(3, max_noise), size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def _random_shape(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """A ``(size, size)`` coverage of one randomly placed, sized and rotated shape."""
    r = size * rng.uniform(0.18, 0.3)
    cx, cy = size * rng.uniform(0.35, 0.65, size=2)
    return shape_coverage(name, cx, cy, r, rng.uniform(0, 2 * np.pi), size, size)


def render_demo_image(class_index: int, rng: np.random.Generator, image_size: int) -> Image.Image:
    """Draw one demo image of class ``DEMO_CLASSES[class_index]``.

    Args:
        class_index: Index into ``DEMO_CLASSES``.
        rng: Source of all randomness (seed it for reproducible images).
        image_size: Side of the square image in pixels.

    Returns:
        An RGB image.
    """
    background = textured_background(rng, image_size)
    colour = class_colour(rng, class_index, len(DEMO_CLASSES), hue_jitter=0.04, min_saturation=0.65)
    cover = _random_shape(rng, DEMO_CLASSES[class_index], image_size)
    return noisy_image(rng, paint(background, colour, cover), max_noise=12)


def _write_images(folder: Path, *, image_size: int, counts: dict[str, int], seed: int) -> None:
    for split_id, (split, count) in enumerate(counts.items()):
        for class_index, name in enumerate(DEMO_CLASSES):
            class_dir = folder / split / name
            class_dir.mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, class_index, i])
                render_demo_image(class_index, rng, image_size).save(class_dir / f"{i:04d}.png")


def check_int_args(*specs: tuple[str, object, int]) -> None:
    """Refuse any ``(key, value, low)`` whose value is not an integer >= low, naming ``data.<key>``."""
    for key, value, low in specs:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"demo {key} must be an integer >= {low}, got {value!r}. Fix: set data.{key}.")


def ensure_generated(root: Path, info: dict, write: Callable[[Path], None]) -> Path:
    """Generate a data set into ``root`` once: ``write(folder)`` fills a temp folder beside ``root``, the
    marker (holding ``info``) goes in last, then the folder is renamed into place (atomic).

    A finished set (marker present) is returned as it is; a non-empty ``root`` without the marker is
    never touched (:class:`FileExistsError`); an interrupted generation leaves nothing behind.
    """
    if (root / MARKER).is_file():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserFileExistsError(
            f"Demo data root {root} exists but is not a finished demo dataset (no {MARKER} marker); "
            "it is left untouched. Fix: delete it, or choose another data.root for the demo data."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(info) + "\n")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, root)  # atomic; replaces an empty folder
        except OSError:
            if not (root / MARKER).is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@dataclass(frozen=True)
class DemoSet:
    """A generated demo set whose images vary in size and carry per-split annotations: a task supplies how a
    split is drawn and written, this class the sizes, the checks, the cache folder and the atomic write.

    Args:
        name: Cache folder prefix: ``<name>-<version>-<image_size>-<train_images>-<val_images>-<seed>``.
        version: Part of the folder name; bumped whenever the drawn files change.
        classes: Class names, recorded in the ``.complete`` marker.
        defaults: ``image_size``, ``train_images``, ``val_images`` and ``seed`` where not given (all four).
        min_image_size: The smallest ``image_size`` accepted.
        write_split: ``write_split(folder, split, rngs, image_size)`` draws and writes the split ``split``
            (``train``, ``val``): one image per generator of ``rngs``.
        files: Text files written at the root before the splits, name -> content.
    """

    name: str
    version: str
    classes: tuple[str, ...]
    defaults: Mapping[str, int]
    min_image_size: int
    write_split: Callable[[Path, str, Iterator[np.random.Generator], int], None]
    files: Mapping[str, str] = field(default_factory=dict)

    def root(self, image_size: int, train_images: int, val_images: int, seed: int) -> Path:
        """:func:`cache_root` / ``<name>-<version>-<image_size>-<train_images>-<val_images>-<seed>``."""
        return cache_root() / f"{self.name}-{self.version}-{image_size}-{train_images}-{val_images}-{seed}"

    def ensure(self, root: str | Path | None = None, **sizes: int) -> Path:
        """Generate the set once (image ``i`` of split ``s`` drawn from ``default_rng([seed, s, i])``: the
        same arguments give the same files) and return its folder.

        Args:
            root: Where to write it; ``None``: see :meth:`root`.
            **sizes: Any of ``image_size``, ``train_images``, ``val_images``, ``seed``; the others keep
                their :attr:`defaults`.

        Raises:
            FileExistsError: ``root`` exists, is not empty and is not a finished demo set.
        """
        unknown = sorted(set(sizes) - set(_SIZE_KEYS))
        if unknown:
            raise TypeError(f"Unknown demo argument(s) {unknown}; expected some of {list(_SIZE_KEYS)}.")
        sizes = {**self.defaults, **sizes}
        image_size, train, val, seed = (sizes[key] for key in _SIZE_KEYS)
        check_int_args(
            ("image_size", image_size, self.min_image_size),
            ("train_images", train, 1),
            ("val_images", val, 1),
        )
        info = {
            "version": self.version,
            "classes": list(self.classes),
            "image_size": image_size,
            "train": train,
            "val": val,
            "seed": seed,
        }

        def write(folder: Path) -> None:
            for name, text in self.files.items():
                (folder / name).write_text(text)
            for split_id, (split, count) in enumerate((("train", train), ("val", val))):
                rngs = (np.random.default_rng([seed, split_id, i]) for i in range(count))
                self.write_split(folder, split, rngs, image_size)

        folder = self.root(image_size, train, val, seed) if root is None else Path(root).expanduser()
        return ensure_generated(folder, info, write)


def ensure_demo(
    root: str | Path | None = None,
    *,
    image_size: int = 128,
    train_per_class: int = 40,
    val_per_class: int = 12,
    seed: int = 0,
) -> Path:
    """Generate the demo dataset once (deterministically) and return its folder.

    Args:
        root: Where to write it; ``None``: see :func:`default_demo_root`.
        image_size: Side of the square images in pixels.
        train_per_class: Training images per class.
        val_per_class: Validation images per class.
        seed: Seed of the generator; the same arguments give the same pixels.

    Returns:
        The dataset folder, holding ``train/<class>/`` and ``val/<class>/``.

    Raises:
        FileExistsError: ``root`` exists, is not empty and is not a finished demo set.
    """
    check_int_args(
        ("image_size", image_size, 16),
        ("train_per_class", train_per_class, 1),
        ("val_per_class", val_per_class, 1),
    )
    if root is None:
        root = default_demo_root(image_size, train_per_class, val_per_class, seed)
    counts = {"train": train_per_class, "val": val_per_class}
    info = {
        "version": DEMO_VERSION,
        "classes": list(DEMO_CLASSES),
        "image_size": image_size,
        **counts,
        "seed": seed,
    }
    return ensure_generated(
        Path(root).expanduser(),
        info,
        lambda folder: _write_images(folder, image_size=image_size, counts=counts, seed=seed),
    )
