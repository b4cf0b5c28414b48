"""Build small real-image dev benchmarks offline from Debian packages (no network, no demo shapes).

Detection set (``--which detection``): clip-art cut-outs with real transparency from Debian's
``openclipart-png`` (4 categories: animal, food, vehicle, tool), trimmed to their alpha bounding box and
pasted onto random crops of real photographs from Debian wallpaper packages (``lomiri-wallpapers``,
``mate-backgrounds``, ``plasma-workspace-wallpapers``). COCO layout, read by ``data=coco data.root=DIR``::

    DIR/annotations/instances_train.json   DIR/train/*.jpg   (400 images, 512x512, JPEG q90)
    DIR/annotations/instances_val.json     DIR/val/*.jpg     (100 images)

Segmentation set (``--which segmentation``): the detection set's kind of scenes (other random draws,
cut-outs 100-400 px long), each pixel labelled by the top-most pasted cut-out (alpha >= 64) or
background (0), as ``data=seg_folder`` reads it: ``DIR/images/{train,val}/*.jpg`` (400 / 100, 512x512),
``DIR/masks/{train,val}/*.png`` (8-bit class indices 0-4) and ``DIR/classes.txt`` (background, animal,
food, vehicle, tool).

Classification set (``--which classification``): 6 classes (bird, bug, mammal, fruit, vehicle, tool),
one cut-out per image on the same photo pool for every class, at varied scale/position, as class
folders read by ``data=folder data.root=DIR``: ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*.jpg``.

No leakage: train and val use different cut-out source images (whole file-name families, and
near-duplicates found by their silhouettes, go to one split) and disjoint background photographs.
Everything is deterministic: sorted file lists, fixed seeds, one random generator per output image.
Each output folder gets ``SOURCES.json`` (packages and versions, the source files of every split, and
for each image its background file, crop and pasted cut-outs) and ``SOURCES.txt`` (a summary).

Usage::

    apt-get install openclipart-png lomiri-wallpapers mate-backgrounds plasma-workspace-wallpapers
    python scripts/build_real_sets.py --out /work/data/real_det --which detection
    python scripts/build_real_sets.py --out /work/data/real_seg --which segmentation
    python scripts/build_real_sets.py --out /work/data/real_cls --which classification
    python scripts/build_real_sets.py --out /work/data/real --which all   # DIR/detection, segmentation, ...
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLIPART = Path("/usr/share/openclipart/png")
PACKAGES = ["openclipart-png", "lomiri-wallpapers", "mate-backgrounds", "plasma-workspace-wallpapers"]
MAX_SOURCE_PIXELS = 25_000_000  # a few openclipart PNGs are 10000x16000 or more: skipped
CUTOUT_CACHE_SIDE = 384  # cut-outs are kept at most this long (outputs paste them at <= 260 px)
ALPHA_MIN = 16  # alpha below this counts as transparent
BOX_ALPHA = 64  # alpha at or above this counts for the tight box of a pasted object

# --- backgrounds: photographs only (the abstract and rendered wallpapers are left out), none showing a
# salient animal, food, vehicle or tool (friends_by_Aitzol has dogs, EveningGlow boats, Wine a bottle,
# Picture_1A paint brushes). Train and val use disjoint photos.
BG_TRAIN = [
    "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg",
    "/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg",
    "/usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg",
    "/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg",
    "/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg",
    "/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg",
    "/usr/share/backgrounds/mate/nature/Aqua.jpg",
    "/usr/share/backgrounds/mate/nature/Blinds.jpg",
    "/usr/share/backgrounds/mate/nature/Dune.jpg",
    "/usr/share/backgrounds/mate/nature/FreshFlower.jpg",
    "/usr/share/backgrounds/mate/nature/GreenMeadow.jpg",
    "/usr/share/backgrounds/mate/nature/TwoWings.jpg",
    "/usr/share/backgrounds/mate/nature/Wood.jpg",
    "/usr/share/backgrounds/mate/nature/YellowFlower.jpg",
    "/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
]
BG_VAL = [
    "/usr/share/backgrounds/mate/nature/Storm.jpg",
    "/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "/usr/share/backgrounds/mate/nature/Garden.jpg",
    "/usr/share/backgrounds/mate/nature/RainDrops.jpg",
    "/usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/Grey/contents/images/2560x1600.jpg",
    "/usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg",
]
BG_SHORT_SIDE = 1024  # photos are decoded at about this short side, then cropped

# --- clip-art categories: folders under /usr/share/openclipart/png, minus files that are not one object
# of the class (groups, scenes, signs, diagrams, text, props), chosen by looking at every candidate.
ANIMAL_EXCLUDE = [
    "2_dead_frogs", "cigni_bianchi_e_neri", "mirjam_meijer", "stormo_di_uccelli", "turkey_on_platter",
    "quattro_farfalle", "virus_andreas", "cani_e_gatti", "cymru_flag", "dragon_head", "mermaid", "troll_",
    "the_incredible_tux", "manager_mimooh", "kallisti-grenade", "paesaggio_marino", "lucchetto_",
    "sleeping_bear_under", "cartoon_vgcats", "cat_scrathing_post", "le_mie_tigri", "mascot_enrique",
    "tante_orme", "tatoo_tatuaggio", "three_eyes", "emule_icon", "mhooo_peterm", "shaezy_peterm",
    "skoynk_peterm", "squeek_peterm", "wing_mitchell", "mechorse", "crawfish",
]  # fmt: skip
FOOD_EXCLUDE = [
    "noi_due_insieme", "macchina_caffe", "chef_jarno", "crawfish", "fondue_", "gumnut_", "kallisti-grenade",
    "slate-apple", "straw_tote", "tree_whit_fruits", "turkey_platter", "turkey_on_platter", "large_plate",
    "libro_di_ricette", "meatgrinder", "fuoco_da_campeggio", "mix_cucina", "picnic", "thanksgiving",
    "toque_", "menu_example", "plate",
]  # fmt: skip
TOOL_EXCLUDE = [
    "airbrush", "bottle_jean", "cellular_phone", "compass_01", "digital_camera", "electric_lighter",
    "gallows", "green_burner", "orange_burner", "hurricane_lamp", "insecticide", "kexi_kexi", "lampada_di",
    "lock", "mattone_", "meatgrinder", "metal_cage", "natural_gas_pump", "nodding_donkey", "pansement",
    "scart_connector", "smoke_nicu", "toothbrush", "unit_blocks", "umbrella", "ironing_board",
    "stefan_graubner", "wooden_mallot", "calamita",
]  # fmt: skip
VEHICLE_NAMES = [  # transportation/ holds road signs, AIGA symbols, knots and sailing diagrams: names chosen
    "beach_trip_ganson", "bicycle_philippe_colin", "big_truck", "bike_tobias_jakobs", "blazer_01",
    "boat_jarno_vasamaa", "sailboat_illustration.png", "sailing_kids", "bus1_", "bus2_", "car_jamin_ellis",
    "car_ride_ganson", "dodge_neon", "formula_one_car", "hummer_", "m1_abrams", "motorcycle_jarno",
    "old_car_lumen", "old_truck_indana", "pallone_aerestatico", "plane_in_the_sky", "redcar_marcelo",
    "road_runner_ganson", "skoda_car", "small_truck_steffen", "soviet_shuttle", "sportcar_sergio",
    "toyota_land_cruiser", "tramway_lumen", "truck_jarno_vasamaa", "chevrolet_celebri", "4wd.png",
    "aircraft_jarno_vasamaa", "airplane_nicu_buculei", "bicicletta_cycle", "bicycle_01", "car.png",
    "departing_plane", "military_airplane", "plane_silhouet", "rocket.png", "the_mad_little_ship",
    "trattore_architetto", "trawler_01", "vtt_02",
]  # fmt: skip


@dataclass(frozen=True)
class ClassSpec:
    name: str
    folders: tuple[str, ...]  # under CLIPART, searched recursively
    exclude: tuple[str, ...] = ()  # file-name substrings left out
    include: tuple[str, ...] = ()  # if given: only file names containing one of these
    skip_dirs: tuple[str, ...] = ()  # sub-folders (relative to CLIPART) left out


DET_CLASSES = [
    ClassSpec("animal", ("animals",), tuple(ANIMAL_EXCLUDE)),
    ClassSpec("food", ("food",), tuple(FOOD_EXCLUDE)),
    ClassSpec("vehicle", ("transportation",), include=tuple(VEHICLE_NAMES)),
    ClassSpec("tool", ("tools",), tuple(TOOL_EXCLUDE), skip_dirs=("tools/weapons", "tools/toys")),
]
CLS_CLASSES = [
    ClassSpec("bird", ("animals/birds",), tuple(ANIMAL_EXCLUDE)),
    ClassSpec("bug", ("animals/bugs",), tuple(ANIMAL_EXCLUDE + ["lumaca"])),  # insects and spiders, no snails
    ClassSpec("mammal", ("animals/mammals",), tuple(ANIMAL_EXCLUDE)),
    ClassSpec("fruit", ("food/fruit",), tuple(FOOD_EXCLUDE)),
    ClassSpec("vehicle", ("transportation",), include=tuple(VEHICLE_NAMES)),
    ClassSpec("tool", ("tools",), tuple(TOOL_EXCLUDE), skip_dirs=("tools/weapons", "tools/toys")),
]


# ----------------------------------------------------------------------------------------------------
# sources


def check_installed() -> dict[str, str]:
    """``{package: version}``; exits with the apt-get line when something is missing."""
    versions, missing = {}, []
    for pkg in PACKAGES:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Status}\t${Version}", pkg], capture_output=True, text=True
        )
        status, _, version = out.stdout.partition("\t")
        if out.returncode != 0 or "install ok installed" not in status:
            missing.append(pkg)
        else:
            versions[pkg] = version
    files = [Path(p) for p in BG_TRAIN + BG_VAL] + [CLIPART]
    absent = [str(p) for p in files if not p.exists()]
    if missing or absent:
        print(
            "Missing source packages/files: "
            + ", ".join(missing + absent)
            + f"\nInstall them (as root, offline mirror/apt cache is enough):\n"
            f"  apt-get install --no-install-recommends {' '.join(PACKAGES)}",
            file=sys.stderr,
        )
        sys.exit(2)
    return versions


@functools.cache
def owner_package(path: str) -> str:
    out = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    return out.stdout.split(":")[0].strip() if out.returncode == 0 else "?"


@dataclass
class Cutout:
    path: str  # relative to CLIPART
    image: Image.Image  # RGBA, trimmed to the alpha box, longer side <= CUTOUT_CACHE_SIDE
    md5: str
    mask_hash: np.ndarray  # 16x16 bool silhouette
    aspect: float
    sat: float

    @property
    def stem(self) -> str:
        """File-name family: variants like ``dog_05_..._01/_02`` or ``hummer_01.._07`` share it."""
        name = Path(self.path).stem.lower()
        name = re.sub(r"(_bw)?(_?\d+)*_?$", "", name)
        name = re.sub(r"(_bw|_bn|bw_)", "", name)
        name = re.sub(r"\d+", "", name)
        return name.strip("_-") or name


def list_class_files(spec: ClassSpec) -> list[Path]:
    files = sorted({p for folder in spec.folders for p in (CLIPART / folder).rglob("*.png")})
    out = []
    for p in files:
        if any(p.is_relative_to(CLIPART / d) for d in spec.skip_dirs):
            continue
        name = p.name.lower()
        if spec.include and not any(s.lower() in name for s in spec.include):
            continue
        if any(s.lower() in name for s in spec.exclude):
            continue
        out.append(p)
    return out


def load_cutout(path: Path) -> Cutout | None:
    """Trimmed RGBA cut-out, or None when the file has no real transparency or is unusable."""
    with Image.open(path) as im:
        if im.size[0] * im.size[1] > MAX_SOURCE_PIXELS:
            return None
        im = im.convert("RGBA")
    raw = path.read_bytes()
    a = np.asarray(im)[..., 3]
    if (a < ALPHA_MIN).mean() < 0.05:  # (almost) no transparent pixels: a rectangle, not a cut-out
        return None
    ys, xs = np.nonzero(a >= ALPHA_MIN)
    if len(xs) == 0:
        return None
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    w, h = box[2] - box[0], box[3] - box[1]
    if min(w, h) < 48 or max(w, h) / min(w, h) > 4.0:
        return None
    crop = im.crop(box)
    ca = np.asarray(crop)[..., 3]
    if (ca >= ALPHA_MIN).mean() > 0.97:  # opaque rectangle inside a transparent margin
        return None
    if max(w, h) > CUTOUT_CACHE_SIDE:
        s = CUTOUT_CACHE_SIDE / max(w, h)
        crop = crop.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    arr = np.asarray(crop)
    opaque = arr[..., 3] >= 128
    rgb = arr[..., :3][opaque].astype(np.float32)
    sat = float(((rgb.max(1) - rgb.min(1)) / np.maximum(rgb.max(1), 1)).mean()) if len(rgb) else 0.0
    mask = np.asarray(Image.fromarray(arr[..., 3]).resize((16, 16), Image.Resampling.BILINEAR)) >= 64
    return Cutout(
        path=str(path.relative_to(CLIPART)),
        image=crop,
        md5=hashlib.md5(raw).hexdigest(),
        mask_hash=mask,
        aspect=w / h,
        sat=sat,
    )


def dedupe(per_class: dict[str, list[Cutout]]) -> tuple[dict[str, list[Cutout]], list[str]]:
    """Byte-identical files (openclipart ships some in several folders) are kept once; one found in
    several classes is dropped. Returns the kept cut-outs and a log of the drops."""
    first: dict[str, tuple[str, Cutout]] = {}
    dup_classes: dict[str, set[str]] = {}
    log = []
    for cls in per_class:
        for c in per_class[cls]:
            if c.md5 in first:
                dup_classes[c.md5].add(cls)
                log.append(f"duplicate of {first[c.md5][1].path}: {c.path}")
            else:
                first[c.md5] = (cls, c)
                dup_classes[c.md5] = {cls}
    kept: dict[str, list[Cutout]] = {cls: [] for cls in per_class}
    for md5, (cls, c) in first.items():
        if len(dup_classes[md5]) > 1:
            log.append(f"dropped, in several classes {sorted(dup_classes[md5])}: {c.path}")
        else:
            kept[cls].append(c)
    for cls in kept:
        kept[cls].sort(key=lambda c: c.path)
    return kept, log


def families(cutouts: list[Cutout]) -> list[list[Cutout]]:
    """Groups that must not be split: one file-name family (``dog_05_..._01/_02``, ``bus1_bw_..``/
    ``bus1_..``), joined with near-duplicates (same silhouette: 16x16 alpha masks differing in at most
    10 cells and the same aspect ratio, e.g. a colour and a black-and-white rendering)."""
    parent = list(range(len(cutouts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_stem: dict[str, int] = {}
    for i, c in enumerate(cutouts):
        if c.stem in by_stem:
            parent[find(i)] = find(by_stem[c.stem])
        else:
            by_stem[c.stem] = i
    masks = np.stack([c.mask_hash.ravel() for c in cutouts]) if cutouts else np.zeros((0, 256), bool)
    for i, ci in enumerate(cutouts):
        dist = (masks[i + 1 :] != masks[i]).sum(1)
        for j in np.nonzero(dist <= 10)[0] + i + 1:
            if abs(math.log(ci.aspect / cutouts[j].aspect)) < 0.08:
                parent[find(int(j))] = find(i)
    groups: dict[int, list[Cutout]] = {}
    for i, c in enumerate(cutouts):
        groups.setdefault(find(i), []).append(c)
    return sorted(groups.values(), key=lambda g: g[0].path)


def split_cutouts(cutouts: list[Cutout], val_share: float, seed: int) -> tuple[list[Cutout], list[Cutout]]:
    """Whole families (see ``families``) to train or val, about ``val_share`` of the cut-outs in val."""
    fams = families(cutouts)
    order = np.random.default_rng(seed).permutation(len(fams))
    val: list[Cutout] = []
    target = val_share * len(cutouts)
    for k in order:
        if len(val) >= target:
            break
        if len(val) + len(fams[k]) <= target * 1.15 or not val:
            val.extend(fams[k])
    val_set = {c.path for c in val}
    train = [c for c in cutouts if c.path not in val_set]
    return train, sorted(val, key=lambda c: c.path)


def load_pool(specs: list[ClassSpec], val_share: float, seed: int):
    per_class: dict[str, list[Cutout]] = {}
    rejected = []
    for spec in specs:
        got = []
        for p in list_class_files(spec):
            c = load_cutout(p)
            (got.append(c) if c else rejected.append(str(p.relative_to(CLIPART))))
        per_class[spec.name] = got
    kept, log = dedupe(per_class)
    splits = {}
    for i, spec in enumerate(specs):
        splits[spec.name] = split_cutouts(kept[spec.name], val_share, seed + i)
    return splits, {"rejected_no_alpha_or_too_big_or_small": rejected, "dedupe": log}


def load_backgrounds(paths: list[str]) -> list[tuple[str, Image.Image]]:
    out = []
    for p in paths:
        with Image.open(p) as im:
            im.draft("RGB", (BG_SHORT_SIDE * 2, BG_SHORT_SIDE * 2))
            im = im.convert("RGB")
        s = BG_SHORT_SIDE / min(im.size)
        if s < 1:
            im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.Resampling.LANCZOS)
        out.append((p, im))
    return out


# ----------------------------------------------------------------------------------------------------
# compositing


def background_crop(rng: np.random.Generator, bgs, size: int, min_frac: float = 0.35):
    path, im = bgs[int(rng.integers(len(bgs)))]
    w, h = im.size
    side = int(round(min(w, h) * rng.uniform(min_frac, 1.0)))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
    flip = bool(rng.random() < 0.5)
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.convert("RGBA"), {"file": path, "crop_xywh": [x, y, side, side], "hflip": flip}


def transform_cutout(rng: np.random.Generator, c: Cutout, long_side: int, max_rot: float):
    """Resized, maybe flipped and rotated cut-out, re-trimmed to its visible alpha box."""
    w, h = c.image.size
    s = long_side / max(w, h)
    im = c.image.resize((max(2, round(w * s)), max(2, round(h * s))), Image.Resampling.LANCZOS)
    flip = bool(rng.random() < 0.5)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-max_rot, max_rot)) if rng.random() < 0.5 else 0.0
    if angle:
        im = im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    # mild photometric change so identical sources do not paste identically
    factor = float(rng.uniform(0.85, 1.15))
    arr = np.asarray(im).astype(np.float32)
    arr[..., :3] = np.clip(arr[..., :3] * factor, 0, 255)
    im = Image.fromarray(arr.astype(np.uint8), "RGBA")
    ys, xs = np.nonzero(np.asarray(im)[..., 3] >= BOX_ALPHA)
    im = im.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return im, {"scale": round(s, 4), "hflip": flip, "rotate_deg": round(angle, 2), "gain": round(factor, 3)}


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# ----------------------------------------------------------------------------------------------------
# detection


DET_SIZE = 512
DET_COUNTS = {"train": 400, "val": 100}
DET_EMPTY = 0.10
DET_SIDE = (40, 260)
MAX_COVERED = 0.5


def det_image(rng, bgs, pools, names, side=DET_SIDE):
    canvas, bg_info = background_crop(rng, bgs, DET_SIZE)
    n = 0 if rng.random() < DET_EMPTY else int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.2, 0.2]))
    owner = np.full((DET_SIZE, DET_SIZE), -1, np.int16)  # top-most object per pixel
    objects = []  # dicts with mask area
    for _ in range(n):
        cls = int(rng.integers(len(names)))
        pool = pools[names[cls]]
        c = pool[int(rng.integers(len(pool)))]
        im, tinfo = transform_cutout(rng, c, round(log_uniform(rng, *side)), max_rot=20)
        alpha = np.asarray(im)[..., 3] >= BOX_ALPHA
        w, h = im.size
        placed = None
        for _try in range(30):
            if rng.random() < 0.85 or max(w, h) > DET_SIZE * 0.6:  # fully inside
                x = int(rng.integers(0, max(1, DET_SIZE - w + 1)))
                y = int(rng.integers(0, max(1, DET_SIZE - h + 1)))
            else:  # may be cut by the border, at least ~60 % of its box stays visible
                x = int(rng.integers(-int(0.4 * w), DET_SIZE - int(0.6 * w) + 1))
                y = int(rng.integers(-int(0.4 * h), DET_SIZE - int(0.6 * h) + 1))
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, DET_SIZE), min(y + h, DET_SIZE)
            if x1 - x0 < 12 or y1 - y0 < 12:
                continue
            sub = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
            if sub.sum() < 0.5 * alpha.sum():
                continue
            region = owner[y0:y1, x0:x1]
            covered = np.bincount(region[sub & (region >= 0)], minlength=len(objects))
            ok = True
            for k, o in enumerate(objects):  # pixels of k still visible after this paste
                visible = o["visible"] - covered[k]
                if visible < (1 - MAX_COVERED) * o["area"]:
                    ok = False
                    break
            if ok:
                placed = (x, y, x0, y0, x1, y1, sub, covered)
                break
        if placed is None:
            continue
        x, y, x0, y0, x1, y1, sub, covered = placed
        for k in range(len(objects)):
            objects[k]["visible"] -= int(covered[k])
        canvas.alpha_composite(im, (x0, y0), (x0 - x, y0 - y, x1 - x, y1 - y))
        owner[y0:y1, x0:x1][sub] = len(objects)
        ys, xs = np.nonzero(sub)
        box = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
        area = int(sub.sum())
        objects.append(
            {"cls": cls, "box": box, "area": area, "visible": area, "source": c.path, **tinfo, "xy": [x, y]}
        )
    return canvas.convert("RGB"), bg_info, objects, owner


def coco_annotation(ann_id: int, image_id: int, obj: dict) -> dict:
    """One COCO annotation for a pasted object ``{"box": (x0, y0, x1, y1), "cls": 0-based, "area"}``."""
    x0, y0, x1, y1 = obj["box"]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["cls"] + 1,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": obj["area"],
        "iscrowd": 0,
    }


def build_detection(out: Path, seed: int, versions: dict[str, str]) -> dict:
    print("detection: loading cut-outs ...", flush=True)
    splits, extra = load_pool(DET_CLASSES, val_share=0.25, seed=seed)
    names = [s.name for s in DET_CLASSES]
    bg = {"train": load_backgrounds(BG_TRAIN), "val": load_backgrounds(BG_VAL)}
    if out.exists():
        for sub in ("train", "val", "annotations"):
            shutil.rmtree(out / sub, ignore_errors=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    record = {"packages": versions, "categories": {}, "splits": {}}
    for i, name in enumerate(names):
        record["categories"][name] = {
            "id": i + 1,
            "folders": list(DET_CLASSES[i].folders),
            "train_sources": [c.path for c in splits[name][0]],
            "val_sources": [c.path for c in splits[name][1]],
        }
    stats = {}
    for si, split in enumerate(("train", "val")):
        (out / split).mkdir(parents=True, exist_ok=True)
        pools = {n: splits[n][si] for n in names}
        images, anns, per_image = [], [], []
        for idx in range(DET_COUNTS[split]):
            rng = np.random.default_rng([seed, si, idx])
            img, bg_info, objects, _ = det_image(rng, bg[split], pools, names)
            fname = f"{split}_{idx:05d}.jpg"
            img.save(out / split / fname, quality=90)
            iid = idx + 1
            images.append({"id": iid, "file_name": fname, "width": DET_SIZE, "height": DET_SIZE})
            anns += [coco_annotation(len(anns) + i + 1, iid, o) for i, o in enumerate(objects)]
            per_image.append(
                {
                    "file": fname,
                    "background": {**bg_info, "package": owner_package(bg_info["file"])},
                    "objects": [
                        {k: v for k, v in o.items() if k != "visible"}
                        | {"category": names[o["cls"]], "visible": round(o["visible"] / o["area"], 3)}
                        for o in objects
                    ],
                }
            )
        coco = {
            "info": {"description": f"b4transfer real_det {split}: openclipart cut-outs on Debian photos"},
            "images": images,
            "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)],
        }
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        record["splits"][split] = {"backgrounds": [p for p, _ in bg[split]], "images": per_image}
        sides = [max(a["bbox"][2], a["bbox"][3]) for a in anns]
        stats[split] = {
            "images": len(images),
            "empty_images": sum(1 for p in per_image if not p["objects"]),
            "boxes": len(anns),
            "boxes_per_class": dict(Counter(names[a["category_id"] - 1] for a in anns)),
            "box_longer_side_px": [min(sides), max(sides)] if sides else None,
            "box_w_range": [min(a["bbox"][2] for a in anns), max(a["bbox"][2] for a in anns)],
            "box_h_range": [min(a["bbox"][3] for a in anns), max(a["bbox"][3] for a in anns)],
            "objects_per_image": dict(sorted(Counter(len(p["objects"]) for p in per_image).items())),
        }
        print(f"detection {split}: {stats[split]}", flush=True)
    record["stats"] = stats
    record["filtering"] = extra
    write_sources(out, record, "detection", names, splits)
    return stats


# ----------------------------------------------------------------------------------------------------
# segmentation


SEG_COUNTS = {"train": 400, "val": 100}
SEG_SIDE = (100, 400)  # longer side of a cut-out: larger than for detection, as in scene-parsing sets


def build_segmentation(out: Path, seed: int, versions: dict[str, str]) -> dict:
    """The detection scenes (other random streams), each pixel labelled by its top-most cut-out."""
    print("segmentation: loading cut-outs ...", flush=True)
    splits, extra = load_pool(DET_CLASSES, val_share=0.25, seed=seed)
    names = [s.name for s in DET_CLASSES]
    bg = {"train": load_backgrounds(BG_TRAIN), "val": load_backgrounds(BG_VAL)}
    for sub in ("images", "masks"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(["background", *names]) + "\n")
    record = {"packages": versions, "classes": ["background", *names], "splits": {}}
    stats = {}
    for si, split in enumerate(("train", "val")):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        pools = {n: splits[n][si] for n in names}
        per_image, pixels = [], np.zeros(len(names) + 1, np.int64)
        for idx in range(SEG_COUNTS[split]):
            rng = np.random.default_rng([seed, si, idx, 1])  # 1: not the detection set's images
            img, bg_info, objects, owner = det_image(rng, bg[split], pools, names, side=SEG_SIDE)
            classes = np.array([o["cls"] + 1 for o in objects] + [0], np.uint8)  # owner -1 -> background
            mask = classes[owner]
            stem = f"{split}_{idx:05d}"
            img.save(out / "images" / split / f"{stem}.jpg", quality=90)
            Image.fromarray(mask, mode="L").save(out / "masks" / split / f"{stem}.png")
            pixels += np.bincount(mask.ravel(), minlength=len(names) + 1)
            per_image.append(
                {
                    "file": stem,
                    "background": {**bg_info, "package": owner_package(bg_info["file"])},
                    "objects": [
                        {k: v for k, v in o.items() if k != "visible"}
                        | {"category": names[o["cls"]], "visible": round(o["visible"] / o["area"], 3)}
                        for o in objects
                    ],
                }
            )
        record["splits"][split] = {"backgrounds": [p for p, _ in bg[split]], "images": per_image}
        stats[split] = {
            "images": len(per_image),
            "empty_images": sum(1 for p in per_image if not p["objects"]),
            "objects": sum(len(p["objects"]) for p in per_image),
            "pixel_share": {
                n: round(float(c) / float(pixels.sum()), 4) for n, c in zip(["background", *names], pixels)
            },
        }
        print(f"segmentation {split}: {stats[split]}", flush=True)
    record["stats"] = stats
    record["filtering"] = extra
    write_sources(out, record, "segmentation", names, splits)
    return stats


# ----------------------------------------------------------------------------------------------------
# classification


CLS_SIZE = 256
CLS_PER_CLASS = {"train": 128, "val": 42}


def cls_image(rng, bgs, c: Cutout):
    canvas, bg_info = background_crop(rng, bgs, CLS_SIZE, min_frac=0.3)
    long_side = round(CLS_SIZE * rng.uniform(0.3, 0.85))
    im, tinfo = transform_cutout(rng, c, long_side, max_rot=25)
    w, h = im.size
    x = int(rng.integers(0, max(1, CLS_SIZE - w + 1)))
    y = int(rng.integers(0, max(1, CLS_SIZE - h + 1)))
    canvas.alpha_composite(im, (x, y))
    return canvas.convert("RGB"), bg_info, {**tinfo, "xy": [x, y], "size": [w, h]}


def build_classification(out: Path, seed: int, versions: dict[str, str]) -> dict:
    print("classification: loading cut-outs ...", flush=True)
    splits, extra = load_pool(CLS_CLASSES, val_share=0.25, seed=seed + 100)
    names = [s.name for s in CLS_CLASSES]
    bg = {"train": load_backgrounds(BG_TRAIN), "val": load_backgrounds(BG_VAL)}
    for sub in ("train", "val"):
        shutil.rmtree(out / sub, ignore_errors=True)
    record = {"packages": versions, "classes": {}, "splits": {}}
    for i, name in enumerate(names):
        record["classes"][name] = {
            "folders": list(CLS_CLASSES[i].folders),
            "train_sources": [c.path for c in splits[name][0]],
            "val_sources": [c.path for c in splits[name][1]],
        }
    stats = {}
    for si, split in enumerate(("train", "val")):
        per_image = []
        counts = {}
        for ci, name in enumerate(names):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            pool = splits[name][si]
            # each source used about equally often: a seeded shuffle of repeated source lists
            order_rng = np.random.default_rng([seed, 100 + si, ci])
            reps = math.ceil(CLS_PER_CLASS[split] / len(pool))
            seq = np.concatenate([order_rng.permutation(len(pool)) for _ in range(reps)])
            seq = seq[: CLS_PER_CLASS[split]]
            for idx, k in enumerate(seq):
                rng = np.random.default_rng([seed, 200 + si, ci, idx])
                img, bg_info, tinfo = cls_image(rng, bg[split], pool[int(k)])
                fname = f"{name}_{idx:04d}.jpg"
                img.save(folder / fname, quality=90)
                per_image.append(
                    {
                        "file": f"{split}/{name}/{fname}",
                        "background": {**bg_info, "package": owner_package(bg_info["file"])},
                        "object": {"source": pool[int(k)].path, **tinfo},
                    }
                )
            counts[name] = len(seq)
        record["splits"][split] = {"backgrounds": [p for p, _ in bg[split]], "images": per_image}
        stats[split] = {
            "images": sum(counts.values()),
            "per_class": counts,
            "distinct_sources": {n: len(splits[n][si]) for n in names},
        }
        print(f"classification {split}: {stats[split]}", flush=True)
    record["stats"] = stats
    record["filtering"] = extra
    write_sources(out, record, "classification", names, splits)
    return stats


# ----------------------------------------------------------------------------------------------------


def write_sources(out: Path, record: dict, kind: str, names: list[str], splits) -> None:
    (out / "SOURCES.json").write_text(json.dumps(record, indent=1))
    lines = [
        f"b4transfer real {kind} set, built by scripts/build_real_sets.py (deterministic, offline).",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in record["packages"].items()),
        f"Clip art: {CLIPART} (openclipart-png); photos: backgrounds listed per split below.",
        "Per-image sources (background file, crop, pasted cut-outs and transforms): SOURCES.json.",
        "",
    ]
    for n in names:
        tr, va = splits[n]
        lines.append(f"[{n}] {len(tr)} train / {len(va)} val distinct source images")
        lines += [f"  train {c.path}" for c in tr] + [f"  val   {c.path}" for c in va]
    for split in ("train", "val"):
        lines.append(f"[backgrounds {split}]")
        lines += [f"  {p} ({owner_package(p)})" for p in record["splits"][split]["backgrounds"]]
    lines.append("")
    lines.append("stats: " + json.dumps(record["stats"]))
    (out / "SOURCES.txt").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (outside git)")
    ap.add_argument("--which", choices=["detection", "segmentation", "classification", "all"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    versions = check_installed()
    Image.MAX_IMAGE_PIXELS = None  # sizes are checked against MAX_SOURCE_PIXELS before decoding
    if args.which == "all":
        build_detection(args.out / "detection", args.seed, versions)
        build_segmentation(args.out / "segmentation", args.seed, versions)
        build_classification(args.out / "classification", args.seed, versions)
    elif args.which == "detection":
        build_detection(args.out, args.seed, versions)
    elif args.which == "segmentation":
        build_segmentation(args.out, args.seed, versions)
    else:
        build_classification(args.out, args.seed, versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
