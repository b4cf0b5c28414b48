"""Game-art sets from Debian's ``wesnoth-1.16-data`` (Battle for Wesnoth, GPL art with real alpha).

* ``cls_sprites``: 8 classes (races/factions) of 72x72 unit sprites (all animation frames of a unit),
  upscaled onto a mosaic of the game's own hex terrain tiles, 96x96 PNG.
* ``seg_portraits``: the painted unit portraits (about 400x400, transparent background) of 6 races pasted
  1-3 per image on crops of Debian wallpaper photographs, 288x288; each pixel labelled by its top-most
  portrait (alpha >= 64) or background.

No leakage: a unit's frames (one file-name family or sub-folder) and a portrait's variants (``+female``,
``-2``, ``-old``) go to one split; train and val backgrounds use different terrain tiles / photos.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from . import common

ROOT = Path("/usr/share/games/wesnoth/1.16/data/core/images")
SPRITE_CLASSES = {
    "drakes": ["drakes"],
    "dwarves": ["dwarves"],
    "elves": ["elves-wood"],
    "humans": ["human-loyalists", "human-magi", "human-outlaws", "human-peasants"],
    "merfolk_nagas": ["merfolk", "nagas"],
    "monsters": ["monsters"],
    "orcs_trolls": ["orcs", "goblins", "trolls", "ogres"],
    "undead": ["undead", "undead-necromancers", "undead-skeletal"],
}
PORTRAIT_CLASSES = {
    "human": ["humans"],
    "elf": ["elves"],
    "undead": ["undead"],
    "orc": ["orcs", "goblins", "trolls"],
    "dwarf": ["dwarves"],
    "drake": ["drakes"],
}
TERRAIN = re.compile(  # base tiles (no transitions, no overlays), relative to ROOT/terrain
    r"^(grass/(green|dry|semi-dry|leaf-litter)|flat/(dirt|dirt-dark|road)|sand/(beach|desert)|frozen/(snow|ice))"
    r"\d*\.png$"
)


def unit_family(rel: Path) -> str:
    """``drakes/burner-attack-1.png`` -> ``drakes/burner``; files in a unit sub-folder -> that folder."""
    if len(rel.parts) > 2:
        return "/".join(rel.parts[:2])
    return f"{rel.parts[0]}/{re.split(r'[-+]', rel.stem)[0]}"


def portrait_family(rel: Path) -> str:
    """``humans/mage-red+female.png`` and ``humans/mage-red.png`` share ``humans/mage-red``."""
    stem = re.sub(r"(\+\w+|-\d+|-old|-young)+$", "", rel.stem)
    return f"{rel.parts[0]}/{stem}"


def load_rgba(path: Path) -> Image.Image | None:
    with Image.open(path) as im:
        return common.trim_alpha(im.convert("RGBA"))


def class_pools(base: Path, classes: dict[str, list[str]], family, seed: int, val_share: float):
    """{split: {class: [(rel path, image)]}} with whole families in one split."""
    pools = {s: {} for s in common.SPLITS}
    for ci, (cls, folders) in enumerate(classes.items()):
        items = []
        for folder in folders:
            for p in sorted((base / folder).rglob("*.png")):
                im = load_rgba(p)
                if im is not None and min(im.size) >= 16:
                    items.append((p.relative_to(base), im))
        ids = [str(r) for r, _ in items]
        tr, va = common.group_split(ids, [family(r) for r, _ in items], val_share, seed + ci)
        pools["train"][cls] = [items[i] for i in tr]
        pools["val"][cls] = [items[i] for i in va]
    return pools


def terrain_tiles(seed: int) -> dict[str, list[tuple[str, Image.Image]]]:
    """Base terrain tiles (72x72 hexes), split by file between train and val."""
    files = sorted(
        p for p in (ROOT / "terrain").rglob("*.png") if TERRAIN.match(str(p.relative_to(ROOT / "terrain")))
    )
    rng = np.random.default_rng(seed)
    val = set(rng.choice(len(files), max(1, len(files) // 4), replace=False).tolist())
    tiles = [(str(p.relative_to(ROOT)), Image.open(p).convert("RGBA")) for p in files]
    return {
        "train": [t for i, t in enumerate(tiles) if i not in val],
        "val": [t for i, t in enumerate(tiles) if i in val],
    }


def hex_mosaic(rng: np.random.Generator, tiles, size: int, scale: float) -> Image.Image:
    """Hex-grid mosaic (tiles 72x72, columns 54 px apart, odd columns 36 px down) of 1-2 tile kinds."""
    kinds = [tiles[int(rng.integers(len(tiles)))] for _ in range(2)]
    n = max(1, round(size / scale))
    side = n + 216
    canvas = Image.new("RGBA", (side, side), (60, 80, 50, 255))
    for col in range(side // 54 + 1):
        for row in range(side // 72 + 1):
            _, tile = kinds[0] if rng.random() < 0.8 else kinds[1]
            canvas.alpha_composite(tile, (col * 54, row * 72 + (col % 2) * 36))
    x, y = int(rng.integers(54, 108)), int(rng.integers(54, 108))
    return canvas.crop((x, y, x + n, y + n)).resize((size, size), Image.Resampling.NEAREST)


def build_cls_sprites(out: Path, spec: dict, seed: int, versions: dict[str, str]) -> dict:
    """Classification: one unit sprite per image, class = its race/faction."""
    pools = class_pools(ROOT / "units", SPRITE_CLASSES, unit_family, seed, 0.25)
    tiles = terrain_tiles(seed)
    size = spec["size"]

    def make(rng, item, split, cls):
        rel, sprite = item
        scale = float(rng.uniform(1.0, 1.5))
        canvas = hex_mosaic(rng, tiles[split], size, scale)
        im = sprite.resize(
            (round(sprite.width * scale), round(sprite.height * scale)), Image.Resampling.NEAREST
        )
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im = im.crop((0, 0, min(im.width, size), min(im.height, size)))
        xy = (int(rng.integers(0, size - im.width + 1)), int(rng.integers(0, size - im.height + 1)))
        canvas.alpha_composite(im, xy)
        return canvas.convert("RGB"), {"sprite": str(rel), "scale": round(scale, 3), "xy": list(xy)}

    records, stats = common.build_classification(
        out, list(SPRITE_CLASSES), spec["counts"], pools, make, seed, "png"
    )
    sources = {s: {c: [str(r) for r, _ in v] for c, v in pools[s].items()} for s in pools}
    common.assert_disjoint(sources)
    record = {"task": "classification", "description": spec["description"], "packages": versions}
    record |= {"stats": stats, "terrain": {s: [p for p, _ in tiles[s]] for s in tiles}, "images": records}
    common.write_sources(out, "cls_sprites", record, sources)
    return stats


def build_seg_portraits(out: Path, spec: dict, seed: int, versions: dict[str, str], bgs: dict) -> dict:
    """Segmentation: portraits on photo crops, per-pixel race labels from the portraits' alpha."""
    pools = class_pools(ROOT / "portraits", PORTRAIT_CLASSES, portrait_family, seed + 7, 0.25)
    names, size = list(PORTRAIT_CLASSES), spec["size"]
    common.reset(out, ["images", "masks"])
    (out / "classes.txt").write_text("\n".join(["background", *names]) + "\n")
    stats, records = {}, {}
    for si, split in enumerate(common.SPLITS):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        pixels = np.zeros(len(names) + 1, np.int64)
        per_image = []
        for idx in range(spec["counts"][split]):
            rng = np.random.default_rng([seed, 41, si, idx])
            canvas, bg = common.photo_crop(rng, bgs[split], size)
            objs = []
            for _ in range(0 if rng.random() < 0.05 else int(rng.integers(1, 4))):
                cls = int(rng.integers(len(names)))
                pool = pools[split][names[cls]]
                rel, im = pool[int(rng.integers(len(pool)))]
                im, info = common.scaled(rng, im, round(size * rng.uniform(0.3, 0.85)), max_rot=10)
                objs.append((cls, im, {"portrait": str(rel), **info}))
            img, placed, owner = common.paste_objects(rng, canvas, objs, max_covered=0.5)
            mask = np.array([o["cls"] + 1 for o in placed] + [0], np.uint8)[owner]
            stem = f"{split}_{idx:05d}"
            common.save(img, out / "images" / split / f"{stem}.jpg")
            Image.fromarray(mask, mode="L").save(out / "masks" / split / f"{stem}.png")
            pixels += np.bincount(mask.ravel(), minlength=len(names) + 1)
            per_image.append({"file": stem, "background": bg, "objects": placed})
        records[split] = per_image
        share = {n: round(float(c) / float(pixels.sum()), 4) for n, c in zip(["background", *names], pixels)}
        stats[split] = {"images": len(per_image), "objects": sum(len(p["objects"]) for p in per_image),
                        "pixel_share": share}  # fmt: skip
    sources = {s: {c: [str(r) for r, _ in v] for c, v in pools[s].items()} for s in pools}
    common.assert_disjoint(sources)
    record = {"task": "segmentation", "description": spec["description"], "packages": versions}
    record |= {"stats": stats, "backgrounds": {s: sorted({p for p, _ in bgs[s]}) for s in bgs}}
    common.write_sources(out, "seg_portraits", {**record, "images": records}, sources)
    return stats
