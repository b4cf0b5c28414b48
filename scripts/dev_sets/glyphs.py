"""Sets of rendered type from Debian font packages (Pillow + FreeType + raqm; nothing pasted).

* ``cls_glyphs``: 26 classes (the capital letters A-Z), one letter per 64x64 image, ink and paper colours,
  size, position and a small slant drawn at random; train and val use different font designs.
* ``det_text``: 384x384 document-like pages (paper tint, noise, ruling lines) with 1-8 lines of random
  words, each line boxed and labelled by its script (latin, greek, cyrillic, hebrew, arabic, devanagari).

No leakage: fonts are grouped by design (one package, plus known clones: FreeFont with URW's Nimbus,
Hack with DejaVu, Open Sans and Droid with Noto, Carlito with Lato; and fonts whose glyphs render alike)
and every group goes to one split, for all classes at once.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from . import common

LATIN_PACKAGES = [
    "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-freefont-ttf",
    "fonts-urw-base35", "fonts-lato", "fonts-adf-oldania", "fonts-noto-core", "fonts-crosextra-carlito",
    "fonts-crosextra-caladea", "fonts-linuxlibertine", "fonts-ebgaramond", "fonts-cantarell",
    "fonts-open-sans", "fonts-roboto-unhinted", "fonts-inconsolata", "fonts-hack", "fonts-comic-neue",
    "fonts-go", "fonts-sil-gentium", "fonts-sil-charis", "fonts-sil-andika", "fonts-cmu",
    "fonts-jetbrains-mono", "fonts-fantasque-sans", "fonts-dancingscript", "fonts-lobster",
    "fonts-yanone-kaffeesatz",
]  # fmt: skip
SCRIPT_PACKAGES = [
    "fonts-noto-core", "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-freefont-ttf", "fonts-liberation",
    "fonts-urw-base35", "fonts-sil-charis", "fonts-cmu", "fonts-open-sans",
]  # fmt: skip
CLONES = {
    "fonts-freefont-ttf": "nimbus", "fonts-hack": "dejavu", "fonts-dejavu-core": "dejavu",
    "fonts-dejavu-extra": "dejavu", "fonts-open-sans": "noto", "fonts-droid-fallback": "noto",
    "fonts-noto-core": "noto", "fonts-crosextra-carlito": "lato", "fonts-lato": "lato",
}  # fmt: skip
SKIP_FONT = re.compile(r"Symbol|D050000L|Math|Music|Emoji|Fallback", re.I)
NOTO_LATIN = re.compile(r"^Noto(Sans|Serif|SansMono|SansDisplay|SerifDisplay)-")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FACES_PER_GROUP = 8
SCRIPTS = {  # class: letters to draw words from (and, for devanagari, vowel signs to follow a consonant)
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЭЮЯ",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשת",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "devanagari": "कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह",
}
MATRAS = "ािीुूेैोौं"


def package_fonts(pkg: str) -> list[Path]:
    """The .ttf/.otf files a Debian package installed, sorted."""
    out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
    files = [Path(p) for p in out.stdout.split() if p.endswith((".ttf", ".otf"))]
    return sorted(p for p in files if p.is_file())


def design_group(pkg: str, path: Path) -> str:
    """Fonts of one design family (see module docstring) share the key."""
    if pkg == "fonts-urw-base35":
        stem = path.stem.split("-")[0]
        return "nimbus" if stem.startswith("Nimbus") else f"urw-{stem}"
    return CLONES.get(pkg, pkg)


def covers(path: Path, chars: str) -> bool:
    """True when the font's character map has every character of ``chars``."""
    try:
        cmap = TTFont(str(path), lazy=True, fontNumber=0).getBestCmap() or {}
    except Exception:  # noqa: BLE001 - an unreadable font is simply not used
        return False
    return all(ord(c) in cmap for c in chars)


def list_fonts(packages: list[str], chars: str, name_filter=None) -> list[dict]:
    """[{path, package, group}] of the packages' fonts that cover ``chars`` (identical files once)."""
    fonts, seen = [], set()
    for pkg in packages:
        for path in package_fonts(pkg):
            if SKIP_FONT.search(path.name) or (name_filter and not name_filter(pkg, path)):
                continue
            md5 = hashlib.md5(path.read_bytes()).hexdigest()
            if md5 in seen or not covers(path, chars):
                continue
            seen.add(md5)
            fonts.append({"path": str(path), "package": pkg, "group": design_group(pkg, path)})
    return fonts


def latin_filter(pkg: str, path: Path) -> bool:
    return pkg != "fonts-noto-core" or bool(NOTO_LATIN.match(path.name))


def glyph_thumb(path: str, text: str = "RGQ3a") -> np.ndarray:
    font = ImageFont.truetype(path, 24)
    im = Image.new("L", (160, 40), 0)
    ImageDraw.Draw(im).text((4, 4), text, font=font, fill=255)
    box = im.getbbox() or (0, 0, 160, 40)
    return np.asarray(im.crop(box).resize((60, 12), Image.Resampling.BILINEAR), np.float32).ravel() / 255


def split_fonts(fonts: list[dict], seed: int, val_share: float, check=None) -> tuple[list[dict], list[dict]]:
    """Whole design groups (and look-alike fonts) to one split; ``check(train, val)`` must hold (tries up
    to 200 seeds, e.g. that every script has fonts in both splits)."""
    thumbs = np.stack([glyph_thumb(f["path"]) for f in fonts])
    for k in range(200):
        tr, va = common.group_split(
            [f["path"] for f in fonts], [f["group"] for f in fonts], val_share, seed + k, thumbs, 0.02
        )
        train, val = [fonts[i] for i in tr], [fonts[i] for i in va]
        if check is None or check(train, val):
            return train, val
    raise RuntimeError("no font split with every class in both splits: install more font packages")


def cap_faces(fonts: list[dict], seed: int) -> list[dict]:
    """At most FACES_PER_GROUP faces per design group (a seeded choice), so no family dominates."""
    out = []
    for gi, group in enumerate(sorted({f["group"] for f in fonts})):
        members = [f for f in fonts if f["group"] == group]
        if len(members) > FACES_PER_GROUP:
            keep = np.random.default_rng([seed, gi]).choice(len(members), FACES_PER_GROUP, replace=False)
            members = [members[i] for i in sorted(keep)]
        out += members
    return out


def build_cls_glyphs(out: Path, spec: dict, seed: int, versions: dict[str, str]) -> dict:
    """Classification: one capital letter per image, class = the letter."""
    fonts = cap_faces(list_fonts(LATIN_PACKAGES, LETTERS, latin_filter), seed)
    train, val = split_fonts(fonts, seed, 0.25)
    size = spec["size"]
    pools = {"train": {c: train for c in LETTERS}, "val": {c: val for c in LETTERS}}

    def make(rng, font, split, letter):
        return render_letter(rng, font, size, letter)

    records, stats = common.build_classification(out, list(LETTERS), spec["counts"], pools, make, seed, "png")
    sources = {
        s: {"fonts": [f"{f['path']} ({f['package']})" for f in p]}
        for s, p in (("train", train), ("val", val))
    }
    common.assert_disjoint(sources)
    record = {"task": "classification", "description": spec["description"], "packages": versions}
    common.write_sources(out, "cls_glyphs", {**record, "stats": stats, "images": records}, sources)
    return stats


def render_letter(rng: np.random.Generator, font: dict, size: int, letter: str) -> tuple[Image.Image, dict]:
    """One letter, its ink box 45-85 % of the image side, placed at random, maybe slanted."""
    big = ImageFont.truetype(font["path"], 4 * size)
    mask = Image.new("L", (6 * size, 6 * size), 0)
    ImageDraw.Draw(mask).text((size, size), letter, font=big, fill=255)
    angle = float(rng.uniform(-12, 12))
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC)
    mask = mask.crop(mask.getbbox())
    target = size * rng.uniform(0.45, 0.85)
    s = target / max(mask.size)
    mask = mask.resize(
        (max(1, round(mask.width * s)), max(1, round(mask.height * s))), Image.Resampling.LANCZOS
    )
    paper = common.plain_background(rng, (size, size), light=True)
    ink = rng.integers(0, 110, 3)
    if rng.random() < 0.25:  # light ink on dark paper
        paper = Image.fromarray(255 - np.asarray(paper.convert("RGB")), "RGB").convert("RGBA")
        ink = 255 - ink
    xy = (int(rng.integers(0, size - mask.width + 1)), int(rng.integers(0, size - mask.height + 1)))
    layer = Image.new("RGBA", mask.size, (*[int(v) for v in ink], 255))
    layer.putalpha(mask)
    paper.alpha_composite(layer, xy)
    info = {"font": font["path"], "letter": letter, "rotate_deg": round(angle, 2), "xy": list(xy)}
    return paper.convert("RGB"), info
