"""``cls_icons``: desktop icons of Debian's ``oxygen-icon-theme`` (PNG, real alpha), class = the icon's
freedesktop context (actions, apps, devices, mimetypes, places, status), 64x64 JPEG.

Each icon name is used once, from the largest of the 128, 64 and 48 px renderings the theme ships;
aliases (symbolic links, byte-identical files) are kept once and dropped when they sit in two contexts.
The icon is drawn at 55-95 % of the image side on a plain gradient (light, or any colour in 30 %).

No leakage: one name family (``go-next``/``go-previous``: the name without its last ``-`` token, except
mimetypes where every name is its own) and look-alike icons (thumbnails closer than 0.03) go to one split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from . import common

ROOT = Path("/usr/share/icons/oxygen/base")
SIZES = ("128x128", "64x64", "48x48")
CONTEXTS = ("actions", "apps", "devices", "mimetypes", "places", "status")


def icon_family(context: str, name: str) -> str:
    if context == "mimetypes" or "-" not in name:
        return f"{context}/{name}"
    return f"{context}/{name.rsplit('-', 1)[0]}"


def load_icons() -> dict[str, list[dict]]:
    """{context: [{name, file, image}]} sorted by name; aliases resolved and de-duplicated."""
    by_md5: dict[str, list[tuple[str, str]]] = {}
    chosen: dict[tuple[str, str], Path] = {}
    for context in CONTEXTS:
        for size in reversed(SIZES):  # larger renderings replace smaller ones
            folder = ROOT / size / context
            for p in sorted(folder.glob("*.png")) if folder.is_dir() else []:
                chosen[(context, p.stem)] = p
    icons: dict[str, list[dict]] = {c: [] for c in CONTEXTS}
    for (context, name), p in sorted(chosen.items()):
        real = p.resolve()
        md5 = hashlib.md5(real.read_bytes()).hexdigest()
        by_md5.setdefault(md5, []).append((context, name))
        if len(by_md5[md5]) > 1:  # an alias of an icon kept already
            continue
        with Image.open(real) as im:
            image = common.trim_alpha(im.convert("RGBA"))
        if image is not None and min(image.size) >= 8:
            icons[context].append({"name": name, "md5": md5, "file": str(p), "image": image})
    for context in CONTEXTS:  # an icon aliased into another context is ambiguous: dropped
        icons[context] = [i for i in icons[context] if len({c for c, _ in by_md5[i["md5"]]}) == 1]
    return icons


def build_cls_icons(out: Path, spec: dict, seed: int, versions: dict[str, str]) -> dict:
    """Classification: one icon per image, class = its context."""
    icons = load_icons()
    pools = {s: {} for s in common.SPLITS}
    for ci, context in enumerate(CONTEXTS):
        items = icons[context]
        thumbs = np.stack([common.thumb(i["image"]) for i in items])
        fams = [icon_family(context, i["name"]) for i in items]
        tr, va = common.group_split([i["name"] for i in items], fams, 0.25, seed + ci, thumbs, 0.03)
        pools["train"][context] = [items[k] for k in tr]
        pools["val"][context] = [items[k] for k in va]
    size = spec["size"]

    def make(rng, icon, split, cls):
        canvas = common.plain_background(rng, (size, size), light=bool(rng.random() < 0.7))
        im, info = common.scaled(rng, icon["image"], round(size * rng.uniform(0.55, 0.95)), flip=False)
        xy = (int(rng.integers(0, size - im.width + 1)), int(rng.integers(0, size - im.height + 1)))
        canvas.alpha_composite(im, xy)
        return canvas.convert("RGB"), {"icon": icon["file"], "xy": list(xy), **info}

    records, stats = common.build_classification(out, list(CONTEXTS), spec["counts"], pools, make, seed)
    sources = {s: {c: [i["file"] for i in v] for c, v in pools[s].items()} for s in pools}
    common.assert_disjoint(sources)
    record = {"task": "classification", "description": spec["description"], "packages": versions}
    common.write_sources(out, "cls_icons", {**record, "stats": stats, "images": records}, sources)
    return stats
