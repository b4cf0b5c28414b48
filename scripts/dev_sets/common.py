"""Shared helpers of the dev-benchmark builders: package versions, leak-free splits, backgrounds, pasting
objects with real alpha, and the three output layouts (class folders, COCO, seg_folder) with SOURCES.*.

Everything is deterministic: callers pass sorted lists and seeded ``numpy`` generators.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from build_real_sets import coco_annotation  # scripts/ is on sys.path (build_dev_sets.py)
from PIL import Image

SPLITS = ("train", "val")
BOX_ALPHA = 64  # alpha at or above this is part of an object (its box and its mask)


class MissingSources(RuntimeError):
    """A Debian package or source file the set needs is not installed."""


def package_versions(packages: Sequence[str]) -> dict[str, str]:
    """``{package: version}`` of installed Debian packages; raises ``MissingSources`` naming the rest."""
    versions, missing = {}, []
    for pkg in packages:
        try:
            out = subprocess.run(
                ["dpkg-query", "-W", "-f", "${Status}\t${Version}", pkg], capture_output=True, text=True
            )
        except FileNotFoundError:  # not a Debian system: nothing is installed the way the sets need
            missing.append(pkg)
            continue
        status, _, version = out.stdout.partition("\t")
        if out.returncode != 0 or "install ok installed" not in status:
            missing.append(pkg)
        else:
            versions[pkg] = version
    if missing:
        raise MissingSources(
            f"missing Debian packages: {', '.join(missing)}. Install them with\n"
            f"  apt-get install --no-install-recommends {' '.join(packages)}"
        )
    return versions


# ----------------------------------------------------------------------------------------------------
# leak-free splits


class UnionFind:
    """Disjoint sets over ``range(n)``."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def thumb(im: Image.Image, side: int = 12) -> np.ndarray:
    """Small RGB thumbnail of an image (RGBA composited on mid grey), as a float vector."""
    im = im.convert("RGBA")
    canvas = Image.new("RGBA", im.size, (128, 128, 128, 255))
    canvas.alpha_composite(im)
    small = canvas.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(small, np.float32).ravel() / 255.0


def group_split(
    ids: Sequence[str],
    family: Sequence[str],
    val_share: float,
    seed: int,
    thumbs: np.ndarray | None = None,
    near: float = 0.0,
) -> tuple[list[int], list[int]]:
    """Indices of ``ids`` for train and val such that no family (same ``family`` key, or thumbnails closer
    than ``near`` in mean absolute difference) spans both splits; about ``val_share`` of items in val."""
    uf = UnionFind(len(ids))
    first: dict[str, int] = {}
    for i, key in enumerate(family):
        if key in first:
            uf.union(i, first[key])
        else:
            first[key] = i
    if thumbs is not None and near > 0:
        for i in range(len(ids) - 1):
            dist = np.abs(thumbs[i + 1 :] - thumbs[i]).mean(1)
            for j in np.nonzero(dist < near)[0]:
                uf.union(i, int(j) + i + 1)
    groups: dict[int, list[int]] = {}
    for i in range(len(ids)):
        groups.setdefault(uf.find(i), []).append(i)
    fams = sorted(groups.values(), key=lambda g: ids[g[0]])
    order = np.random.default_rng(seed).permutation(len(fams))
    val: list[int] = []
    target = val_share * len(ids)
    for k in order:
        if len(val) >= target:
            break
        if len(val) + len(fams[k]) <= target * 1.15 or not val:
            val.extend(fams[k])
    val_set = set(val)
    return [i for i in range(len(ids)) if i not in val_set], sorted(val)


def balanced_sequence(rng: np.random.Generator, n_sources: int, count: int) -> list[int]:
    """``count`` source indices, each source used about equally often, in seeded order."""
    reps = -(-count // max(n_sources, 1))
    seq = np.concatenate([rng.permutation(n_sources) for _ in range(reps)])
    return [int(k) for k in seq[:count]]


# ----------------------------------------------------------------------------------------------------
# images


def trim_alpha(im: Image.Image, level: int = BOX_ALPHA) -> Image.Image | None:
    """RGBA image cropped to its pixels with alpha >= ``level``; None when there are none."""
    im = im.convert("RGBA")
    ys, xs = np.nonzero(np.asarray(im)[..., 3] >= level)
    if len(xs) == 0:
        return None
    return im.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def plain_background(rng: np.random.Generator, size: tuple[int, int], light: bool = True) -> Image.Image:
    """A random two-colour vertical/horizontal gradient with mild noise (paper, screen or sky-like)."""
    w, h = size
    lo, hi = (150, 256) if light else (0, 256)
    c0, c1 = rng.integers(lo, hi, 3), rng.integers(lo, hi, 3)
    t = np.linspace(0, 1, h if rng.random() < 0.5 else w, dtype=np.float32)
    grad = c0[None, :] * (1 - t[:, None]) + c1[None, :] * t[:, None]
    arr = np.broadcast_to(grad[:, None, :], (h, w, 3)) if len(t) == h else np.broadcast_to(grad, (h, w, 3))
    arr = arr + rng.normal(0, rng.uniform(0, 6), (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").convert("RGBA")


def photo_crop(rng: np.random.Generator, bgs, size: int, min_frac: float = 0.3):
    """Random square crop (``min_frac``-100 % of the short side) of one of ``bgs`` [(path, image)]."""
    path, im = bgs[int(rng.integers(len(bgs)))]
    w, h = im.size
    side = int(round(min(w, h) * rng.uniform(min_frac, 1.0)))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.convert("RGBA"), {"file": str(path), "crop_xywh": [x, y, side, side]}


def scaled(rng: np.random.Generator, im: Image.Image, long_side: int, max_rot: float = 0.0, flip=True):
    """``im`` resized to ``long_side``, maybe mirrored and rotated, trimmed to its visible alpha box."""
    w, h = im.size
    s = long_side / max(w, h)
    out = im.resize((max(2, round(w * s)), max(2, round(h * s))), Image.Resampling.LANCZOS)
    mirrored = bool(flip and rng.random() < 0.5)
    if mirrored:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-max_rot, max_rot)) if max_rot and rng.random() < 0.5 else 0.0
    if angle:
        out = out.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    return trim_alpha(out) or out, {"scale": round(s, 4), "hflip": mirrored, "rotate_deg": round(angle, 2)}


def paste_objects(
    rng: np.random.Generator,
    canvas: Image.Image,
    objects: Sequence[tuple[int, Image.Image, dict]],
    max_covered: float = 0.5,
    tries: int = 30,
):
    """Alpha-composite ``(class, RGBA image, info)`` objects fully inside ``canvas``; a paste that would
    hide more than ``max_covered`` of an earlier object is retried elsewhere, then skipped.

    Returns the RGB image, the placed objects (class, tight box [x0, y0, x1, y1], area, info) and the
    per-pixel index of the top-most object (-1: background).
    """
    W, H = canvas.size
    owner = np.full((H, W), -1, np.int16)
    placed: list[dict] = []
    for cls, im, info in objects:
        alpha = np.asarray(im)[..., 3] >= BOX_ALPHA
        w, h = im.size
        if w > W or h > H or not alpha.any():
            continue
        for _ in range(tries):
            x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            region = owner[y : y + h, x : x + w]
            covered = np.bincount(region[alpha & (region >= 0)], minlength=len(placed))
            if all(o["visible"] - covered[k] >= (1 - max_covered) * o["area"] for k, o in enumerate(placed)):
                break
        else:
            continue
        for k, o in enumerate(placed):
            o["visible"] -= int(covered[k])
        canvas.alpha_composite(im, (x, y))
        region[alpha] = len(placed)
        ys, xs = np.nonzero(alpha)
        box = [x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1]
        area = int(alpha.sum())
        placed.append({"cls": cls, "box": box, "area": area, "visible": area, "xy": [x, y], **info})
    return canvas.convert("RGB"), placed, owner


# ----------------------------------------------------------------------------------------------------
# layouts


def reset(out: Path, subs: Sequence[str]) -> None:
    """Remove the set's own sub-folders (and nothing else) so a rebuild starts clean."""
    for sub in subs:
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def build_classification(
    out: Path,
    names: Sequence[str],
    counts: dict[str, int],
    pools: dict[str, dict[str, list]],
    make: Callable[[np.random.Generator, object, str, str], tuple[Image.Image, dict]],
    seed: int,
    ext: str = "jpg",
) -> tuple[dict, dict]:
    """Class folders ``out/<split>/<class>/<class>_NNNN.<ext>``, ``counts[split]`` images per class.

    Each image is ``make(rng, source, split, class)`` of a source of the class's split pool (sources are
    used about equally often). Returns (per-image records, stats)."""
    reset(out, SPLITS)
    records, stats = {}, {}
    for si, split in enumerate(SPLITS):
        per_image, per_class = [], {}
        for ci, name in enumerate(names):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            pool = pools[split][name]
            seq = balanced_sequence(np.random.default_rng([seed, 11, si, ci]), len(pool), counts[split])
            for idx, k in enumerate(seq):
                img, info = make(np.random.default_rng([seed, 12, si, ci, idx]), pool[k], split, name)
                fname = f"{name}_{idx:04d}.{ext}"
                save(img, folder / fname)
                per_image.append({"file": f"{split}/{name}/{fname}", **info})
            per_class[name] = {"images": len(seq), "sources": len(pool)}
        records[split] = per_image
        stats[split] = {"images": len(per_image), "per_class": per_class}
    return records, stats


def save(img: Image.Image, path: Path) -> None:
    """JPEG (quality 90) or PNG by the file's suffix."""
    if path.suffix == ".png":
        img.save(path, optimize=False)
    else:
        img.convert("RGB").save(path, quality=90)


def write_coco(out: Path, split: str, names: Sequence[str], images: list[dict], desc: str) -> dict:
    """``out/annotations/instances_<split>.json`` from ``images`` [{file, width, height, objects}]."""
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    coco_images, anns = [], []
    for iid, rec in enumerate(images, start=1):
        coco_images.append(
            {"id": iid, "file_name": rec["file"], "width": rec["width"], "height": rec["height"]}
        )
        anns += [coco_annotation(len(anns) + i + 1, iid, o) for i, o in enumerate(rec["objects"])]
    coco = {
        "info": {"description": desc},
        "images": coco_images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)],
    }
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    sides = [max(a["bbox"][2], a["bbox"][3]) for a in anns]
    return {
        "images": len(coco_images),
        "empty_images": sum(1 for r in images if not r["objects"]),
        "boxes": len(anns),
        "boxes_per_class": {n: sum(a["category_id"] == i + 1 for a in anns) for i, n in enumerate(names)},
        "box_longer_side_px": [min(sides), max(sides)] if sides else None,
    }


def write_sources(out: Path, name: str, record: dict, sources: dict[str, dict[str, list[str]]]) -> None:
    """``SOURCES.json`` (everything in ``record`` plus the per-split source lists) and a short
    ``SOURCES.txt``; ``sources[split][class]`` lists the source files/ids used in that split."""
    record = {**record, "sources": sources}
    (out / "SOURCES.json").write_text(json.dumps(record, indent=1, default=str))
    lines = [
        f"b4transfer dev set {name}, built by scripts/build_dev_sets.py (deterministic, offline).",
        f"Task: {record['task']}; {record['description']}",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in record["packages"].items()),
        "Per-image sources (source file, background, transforms): SOURCES.json.",
        "stats: " + json.dumps(record["stats"]),
        "",
    ]
    for split in SPLITS:
        for cls, items in sources[split].items():
            lines.append(f"[{split} / {cls}] {len(items)} sources")
            lines += [f"  {s}" for s in items]
    (out / "SOURCES.txt").write_text("\n".join(lines) + "\n")


def assert_disjoint(sources: dict[str, dict[str, list[str]]]) -> None:
    """Raise when a source file/id appears in both splits (a bug in a builder)."""
    train = {s for items in sources["train"].values() for s in items}
    val = {s for items in sources["val"].values() for s in items}
    both = sorted(train & val)
    if both:
        raise AssertionError(f"sources in train and val: {both[:5]}")
