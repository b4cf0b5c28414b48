"""``det_text``: script detection on document-like pages, rendered (not pasted) from Debian fonts.

384x384 pages: a paper tint with mild noise, sometimes ruling lines and a margin line; 1-8 lines of random
words (2-8 letters, 1-5 words) of one script each, 11-34 px type, ink of random dark colours. A box is the
tight ink box (coverage >= 64/255) of one line, labelled by its script: latin, greek, cyrillic, hebrew,
arabic, devanagari (shaped and ordered by raqm). Lines never touch (4 px margin).

No leakage: train and val pages use fonts of different design groups (see ``glyphs.split_fonts``), every
script having fonts in both splits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import common, glyphs

MARGIN = 4


def script_fonts(seed: int) -> dict[str, dict[str, list[dict]]]:
    """{split: {script: [font dicts]}} with whole design groups in one split."""
    fonts: dict[str, dict] = {}
    for script, chars in glyphs.SCRIPTS.items():
        extra = glyphs.MATRAS if script == "devanagari" else ""
        for f in glyphs.list_fonts(glyphs.SCRIPT_PACKAGES, chars + extra):
            fonts.setdefault(f["path"], {**f, "scripts": []})["scripts"].append(script)
    pool = [fonts[p] for p in sorted(fonts)]

    def every_script(train, val):
        return all(any(s in f["scripts"] for f in part) for part in (train, val) for s in glyphs.SCRIPTS)

    train, val = glyphs.split_fonts(pool, seed, 0.3, check=every_script)
    return {
        split: {s: [f for f in part if s in f["scripts"]] for s in glyphs.SCRIPTS}
        for split, part in (("train", train), ("val", val))
    }


def random_line(rng: np.random.Generator, script: str) -> str:
    """1-5 random words of 2-8 letters of ``script`` (devanagari consonants may take a vowel sign)."""
    letters = glyphs.SCRIPTS[script]
    words = []
    for _ in range(int(rng.integers(1, 6))):
        word = ""
        for _ in range(int(rng.integers(2, 9))):
            word += letters[int(rng.integers(len(letters)))]
            if script == "devanagari" and rng.random() < 0.5:
                word += glyphs.MATRAS[int(rng.integers(len(glyphs.MATRAS)))]
        words.append(word if script != "latin" or rng.random() < 0.8 else word.capitalize())
    return " ".join(words)


def line_mask(text: str, font_path: str, px: int) -> Image.Image | None:
    """The rendered line as an 'L' coverage mask cropped to its ink, or None if nothing was drawn."""
    font = ImageFont.truetype(font_path, px, layout_engine=ImageFont.Layout.RAQM)
    x0, y0, x1, y1 = font.getbbox(text)
    im = Image.new("L", (x1 - min(x0, 0) + 2 * px, y1 - min(y0, 0) + 2 * px), 0)
    ImageDraw.Draw(im).text((px - min(x0, 0), px - min(y0, 0)), text, font=font, fill=255)
    ys, xs = np.nonzero(np.asarray(im) >= common.BOX_ALPHA)
    if len(xs) == 0:
        return None
    return im.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def paper(rng: np.random.Generator, size: int) -> Image.Image:
    """Paper tint with noise; sometimes ruling lines (every 18-32 px) and a red margin line."""
    page = common.plain_background(rng, (size, size), light=True)
    arr = np.asarray(page).copy()
    rgb = arr[..., :3].astype(np.float32)  # 150-255 from plain_background, squeezed to 200-255
    rgb = 0.35 * rgb + 0.65 * rgb.mean(-1, keepdims=True)  # mostly neutral: white, grey or cream paper
    arr[..., :3] = np.clip(200 + (rgb - 150) * 55 / 105, 0, 255).astype(np.uint8)
    if rng.random() < 0.35:
        step, color = int(rng.integers(18, 33)), rng.integers(120, 200, 3)
        arr[int(rng.integers(8, step)) :: step, :, :3] = color
        if rng.random() < 0.5:
            arr[:, int(rng.integers(20, 60)), :3] = (200, 80, 80)
    return Image.fromarray(arr, "RGBA")


def make_page(rng: np.random.Generator, fonts: dict[str, list[dict]], size: int):
    """A page and its lines [{cls, box, area, script, font, px, text}]."""
    page = paper(rng, size)
    free = np.ones((size, size), bool)
    names = list(glyphs.SCRIPTS)
    lines = []
    for _ in range(int(rng.integers(1, 9))):
        cls = int(rng.integers(len(names)))
        font = fonts[names[cls]][int(rng.integers(len(fonts[names[cls]])))]
        px = round(math.exp(rng.uniform(math.log(11), math.log(34))))
        text = random_line(rng, names[cls])
        mask = line_mask(text, font["path"], px)
        if mask is None:
            continue
        if mask.width > size - 2 * MARGIN:  # too long: keep it on the page by shrinking the type
            mask = mask.resize((size - 2 * MARGIN, max(1, mask.height * (size - 2 * MARGIN) // mask.width)))
        w, h = mask.size
        for _try in range(30):
            x = int(rng.integers(MARGIN, size - w - MARGIN + 1))
            y = int(rng.integers(MARGIN, size - h - MARGIN + 1))
            if free[y - MARGIN : y + h + MARGIN, x - MARGIN : x + w + MARGIN].all():
                break
        else:
            continue
        free[y - MARGIN : y + h + MARGIN, x - MARGIN : x + w + MARGIN] = False
        ink = Image.new("RGBA", (w, h), (*[int(v) for v in rng.integers(0, 90, 3)], 255))
        ink.putalpha(mask)
        page.alpha_composite(ink, (x, y))
        box = [x, y, x + w, y + h]
        area = int((np.asarray(mask) >= common.BOX_ALPHA).sum())
        lines.append({"cls": cls, "box": box, "area": area, "font": font["path"], "px": px, "text": text})
    return page.convert("RGB"), lines


def build_det_text(out: Path, spec: dict, seed: int, versions: dict[str, str]) -> dict:
    """Detection: lines of text boxed and labelled by script."""
    fonts = script_fonts(seed)
    names, size = list(glyphs.SCRIPTS), spec["size"]
    common.reset(out, ["train", "val", "annotations"])
    stats, records = {}, {}
    for si, split in enumerate(common.SPLITS):
        (out / split).mkdir(parents=True, exist_ok=True)
        images = []
        for idx in range(spec["counts"][split]):
            page, lines = make_page(np.random.default_rng([seed, 31, si, idx]), fonts[split], size)
            fname = f"{split}_{idx:05d}.jpg"
            common.save(page, out / split / fname)
            images.append({"file": fname, "width": size, "height": size, "objects": lines})
        stats[split] = common.write_coco(out, split, names, images, f"b4transfer det_text {split}")
        records[split] = images
    sources = {
        s: {c: sorted({f["path"] for f in fonts[s][c]}) for c in names} for s in common.SPLITS
    }  # fmt: skip
    common.assert_disjoint(sources)
    record = {"task": "detection", "description": spec["description"], "packages": versions}
    common.write_sources(out, "det_text", {**record, "stats": stats, "images": records}, sources)
    return stats
