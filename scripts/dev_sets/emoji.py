"""Emoji sets from Debian's ``fonts-noto-color-emoji`` (the colour bitmaps, rendered with Pillow) grouped by
the Unicode emoji groups of ``unicode-data``'s ``emoji-test.txt``.

* ``cls_emoji``: 9 classes (the emoji groups), one emoji per 128x128 image on a plain gradient.
* ``det_emoji``: small emoji (12-56 px) of 5 classes (face, animal, food, vehicle, flag) pasted on crops
  of Debian wallpaper photographs, 320x320, up to 10 per image.

No leakage: an emoji and its variants (skin tones are left out; gender/person variants and emoji that
render alike, e.g. the identical flags of Norway and Svalbard, form one family) go to one split.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import common

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
GENDER_WORDS = r"\b(man|woman|person|men|women|people|boy|girl|adult|child|older|old)\b"
CLS_GROUPS = {
    "smileys": "Smileys & Emotion",
    "people": "People & Body",
    "animals_nature": "Animals & Nature",
    "food_drink": "Food & Drink",
    "travel_places": "Travel & Places",
    "activities": "Activities",
    "objects": "Objects",
    "symbols": "Symbols",
    "flags": "Flags",
}
DET_CLASSES = {  # class: (group, subgroup prefix)
    "face": ("Smileys & Emotion", "face-"),
    "animal": ("Animals & Nature", "animal-"),
    "food": ("Food & Drink", "food-"),
    "vehicle": ("Travel & Places", "transport-"),
    "flag": ("Flags", "country-flag"),
}


def parse_emoji_test(path: Path | None = None) -> list[dict]:
    """Fully-qualified emoji without skin-tone modifiers: [{seq, group, subgroup, name}], file order."""
    out, group, sub = [], "", ""
    for line in (path or EMOJI_TEST).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            sub = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and group != "Component":
            cps = [int(c, 16) for c in line.split(";")[0].split()]
            if SKIN_TONES & set(cps):
                continue
            name = re.sub(r"^.*?E\d+\.\d+\s+", "", line.split("#", 1)[1].strip())
            out.append({"seq": "".join(chr(c) for c in cps), "group": group, "subgroup": sub, "name": name})
    return out


def family_key(name: str) -> str:
    """Emoji that differ only by gender/person words (``man running``, ``woman running``) share a key."""
    key = re.sub(GENDER_WORDS, "", name.lower())
    key = key.replace("facing right", "")
    return re.sub(r"[\s,]+", " ", key).strip(" :") or "person"


def render(entries: list[dict], font_path: Path | None = None) -> list[dict]:
    """Adds ``image`` (RGBA, trimmed) to each entry; drops sequences the font draws as several glyphs."""
    font = ImageFont.truetype(str(font_path or FONT), 109, layout_engine=ImageFont.Layout.RAQM)
    kept = []
    for e in entries:
        x0, y0, x1, y1 = font.getbbox(e["seq"])
        if x1 - x0 > 1.3 * (y1 - y0):  # not one ligature: the font lacks this sequence
            continue
        im = Image.new("RGBA", (x1 + 8, y1 + 8), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((4, 4), e["seq"], font=font, embedded_color=True)
        im = common.trim_alpha(im)
        if im is not None and min(im.size) >= 16:
            kept.append({**e, "id": "-".join(f"{ord(c):X}" for c in e["seq"]), "image": im})
    return kept


def split_pools(by_class: dict[str, list[dict]], seed: int, val_share: float = 0.27):
    """{split: {class: [entries]}} with families and look-alikes in one split."""
    pools = {s: {} for s in common.SPLITS}
    for ci, (cls, items) in enumerate(by_class.items()):
        thumbs = np.stack([common.thumb(e["image"]) for e in items])
        train, val = common.group_split(
            [e["id"] for e in items],
            [family_key(e["name"]) for e in items],
            val_share,
            seed + ci,
            thumbs,
            0.03,
        )
        pools["train"][cls] = [items[i] for i in train]
        pools["val"][cls] = [items[i] for i in val]
    return pools


def source_lists(pools) -> dict:
    return {s: {c: [f"{e['id']} {e['name']}" for e in v] for c, v in pools[s].items()} for s in pools}


def build_cls_emoji(out: Path, spec: dict, seed: int, versions: dict[str, str]) -> dict:
    """Classification: one emoji per image, class = its Unicode emoji group."""
    entries = render(parse_emoji_test())
    by_class = {c: [e for e in entries if e["group"] == g] for c, g in CLS_GROUPS.items()}
    pools = split_pools(by_class, seed)
    size = spec["size"]

    def make(rng, e, split, cls):
        canvas = common.plain_background(rng, (size, size), light=bool(rng.random() < 0.7))
        im, info = common.scaled(
            rng, e["image"], round(size * rng.uniform(0.45, 0.85)), max_rot=15, flip=False
        )
        w, h = im.size
        xy = (int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1)))
        canvas.alpha_composite(im, xy)
        return canvas.convert("RGB"), {"emoji": e["id"], "name": e["name"], "xy": list(xy), **info}

    records, stats = common.build_classification(out, list(CLS_GROUPS), spec["counts"], pools, make, seed)
    sources = source_lists(pools)
    common.assert_disjoint(sources)
    record = {"task": "classification", "description": spec["description"], "packages": versions}
    common.write_sources(out, "cls_emoji", {**record, "stats": stats, "images": records}, sources)
    return stats


def build_det_emoji(out: Path, spec: dict, seed: int, versions: dict[str, str], bgs: dict) -> dict:
    """Detection: small emoji pasted on photo crops; ``bgs[split]`` = [(path, image)]."""
    entries = render(parse_emoji_test())
    by_class = {
        c: [e for e in entries if e["group"] == g and e["subgroup"].startswith(p)]
        for c, (g, p) in DET_CLASSES.items()
    }
    pools = split_pools(by_class, seed + 50)
    names, size = list(DET_CLASSES), spec["size"]
    common.reset(out, ["train", "val", "annotations"])
    stats, records = {}, {}
    for si, split in enumerate(common.SPLITS):
        (out / split).mkdir(parents=True, exist_ok=True)
        images = []
        for idx in range(spec["counts"][split]):
            rng = np.random.default_rng([seed, 21, si, idx])
            canvas, bg = common.photo_crop(rng, bgs[split], size)
            n = 0 if rng.random() < 0.05 else int(rng.integers(1, 11))
            objs = []
            for _ in range(n):
                cls = int(rng.integers(len(names)))
                pool = pools[split][names[cls]]
                e = pool[int(rng.integers(len(pool)))]
                side = round(math.exp(rng.uniform(math.log(12), math.log(56))))
                im, info = common.scaled(rng, e["image"], side, max_rot=20, flip=False)
                objs.append((cls, im, {"emoji": e["id"], **info}))
            img, placed, _ = common.paste_objects(rng, canvas, objs, max_covered=0.3)
            fname = f"{split}_{idx:05d}.jpg"
            common.save(img, out / split / fname)
            images.append({"file": fname, "width": size, "height": size, "objects": placed, "background": bg})
        stats[split] = common.write_coco(out, split, names, images, f"b4transfer det_emoji {split}")
        records[split] = images
    sources = source_lists(pools)
    common.assert_disjoint(sources)
    sources_bg = {s: sorted({p for p, _ in bgs[s]}) for s in common.SPLITS}
    record = {"task": "detection", "description": spec["description"], "packages": versions}
    record |= {"stats": stats, "backgrounds": sources_bg, "images": records}
    common.write_sources(out, "det_emoji", record, sources)
    return stats
