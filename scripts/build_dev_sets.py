"""Build the multi-dataset dev benchmark offline from real images in Debian packages (issue 27).

Ten small sets, each a different source of real images, in the layouts the library reads::

    classification  DIR/<set>/train/<class>/*.jpg|png, DIR/<set>/val/<class>/...     data=folder
    detection       DIR/<set>/annotations/instances_{train,val}.json, train/, val/   data=coco
    segmentation    DIR/<set>/images/{train,val}/*.jpg, masks/{train,val}/*.png,
                    classes.txt                                                      data=seg_folder

``DEV_SETS`` (importable) names every set, its task, source packages, classes, sizes and whether it is
HELD OUT (used only to check defaults chosen on the others, never to choose them). Train and val never
share a source file (near-duplicates and variants stay in one split); everything is deterministic (sorted
file lists, fixed seeds); each set writes SOURCES.json / SOURCES.txt (package versions, the sources of
every split, per-image provenance). The three openclipart sets are built by ``build_real_sets.py``.

Usage::

    apt-get install --no-install-recommends $(python scripts/build_dev_sets.py --packages)
    python scripts/build_dev_sets.py --list
    python scripts/build_dev_sets.py --out /work/data/dev --which all          # or cls_emoji,det_text
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_real_sets as real  # noqa: E402
from dev_sets import common, emoji, glyphs, icons, text, wesnoth  # noqa: E402

PHOTOS = ["lomiri-wallpapers", "mate-backgrounds", "plasma-workspace-wallpapers"]
WESNOTH = ["wesnoth-1.16-data"]
EMOJI = ["fonts-noto-color-emoji", "unicode-data"]


def _spec(task, held_out, packages, classes, train, val, size, description, per_class=True):
    counts = {"train": train, "val": val}
    n = classes if per_class else 1
    return {
        "task": task, "held_out": held_out, "packages": packages, "classes": classes, "counts": counts,
        "images": {k: v * n for k, v in counts.items()}, "size": size, "description": description,
    }  # fmt: skip


DEV_SETS: dict[str, dict] = {
    "cls_clipart": _spec("classification", False, real.PACKAGES, 6, 128, 42, 256,
                         "openclipart cut-outs (bird, bug, mammal, fruit, vehicle, tool) on photos"),
    "cls_emoji": _spec("classification", False, EMOJI, 9, 120, 40, 128,
                       "Noto colour emoji, class = Unicode emoji group, on plain gradients"),
    "cls_glyphs": _spec("classification", False, glyphs.LATIN_PACKAGES, 26, 40, 12, 64,
                        "capital letters A-Z rendered from ~150 font faces; val fonts of other designs"),
    "cls_icons": _spec("classification", False, ["oxygen-icon-theme"], 6, 120, 40, 80,
                       "Oxygen desktop icons, class = context (actions, apps, devices, mimetypes, ...)"),
    "cls_sprites": _spec("classification", True, WESNOTH, 8, 100, 30, 96,
                         "Wesnoth unit sprites, class = race/faction, on the game's hex terrain tiles"),
    "det_clipart": _spec("detection", False, real.PACKAGES, 4, 400, 100, 512,
                         "openclipart cut-outs (animal, food, vehicle, tool; 40-260 px) on photos",
                         per_class=False),
    "det_emoji": _spec("detection", True, EMOJI + PHOTOS, 5, 600, 150, 320,
                       "small emoji (12-56 px; face, animal, food, vehicle, flag) on photos",
                       per_class=False),
    "det_text": _spec("detection", False, glyphs.SCRIPT_PACKAGES, 6, 500, 150, 384,
                      "rendered text lines on paper, class = script (latin, greek, cyrillic, hebrew, "
                      "arabic, devanagari); not pasted", per_class=False),
    "seg_clipart": _spec("segmentation", False, real.PACKAGES, 4, 400, 100, 512,
                         "openclipart cut-outs on photos, per-pixel class from alpha", per_class=False),
    "seg_portraits": _spec("segmentation", False, WESNOTH + PHOTOS, 6, 400, 120, 288,
                           "Wesnoth painted portraits (human, elf, undead, orc, dwarf, drake) on photos, "
                           "per-pixel class from alpha", per_class=False),
}  # fmt: skip
HELD_OUT = [name for name, spec in DEV_SETS.items() if spec["held_out"]]


@functools.cache
def photo_backgrounds() -> dict:
    """The vetted wallpaper photographs of build_real_sets.py, disjoint between train and val."""
    return {"train": real.load_backgrounds(real.BG_TRAIN), "val": real.load_backgrounds(real.BG_VAL)}


def _clipart(kind: str):
    def build(out: Path, spec: dict, seed: int, versions: dict) -> dict:
        real.check_installed()  # exits 2 naming the missing packages/files
        return getattr(real, f"build_{kind}")(out, seed, versions)

    return build


BUILDERS = {
    "cls_clipart": _clipart("classification"),
    "cls_emoji": emoji.build_cls_emoji,
    "cls_glyphs": glyphs.build_cls_glyphs,
    "cls_icons": icons.build_cls_icons,
    "cls_sprites": wesnoth.build_cls_sprites,
    "det_clipart": _clipart("detection"),
    "det_emoji": lambda out, spec, seed, v: emoji.build_det_emoji(out, spec, seed, v, photo_backgrounds()),
    "det_text": text.build_det_text,
    "seg_clipart": _clipart("segmentation"),
    "seg_portraits": lambda out, spec, seed, v: wesnoth.build_seg_portraits(
        out, spec, seed, v, photo_backgrounds()
    ),
}


def all_packages() -> list[str]:
    """Every Debian package any set needs, sorted."""
    return sorted({p for spec in DEV_SETS.values() for p in spec["packages"]})


def list_sets() -> str:
    """One line per set: name, task, held-out mark, #classes, #train/#val images, image side, packages."""
    rows = [f"{'set':<14} {'task':<15} {'held':<5} {'cls':>4} {'train':>6} {'val':>5} {'side':>5}  packages"]
    for name, s in DEV_SETS.items():
        rows.append(
            f"{name:<14} {s['task']:<15} {'yes' if s['held_out'] else '-':<5} {s['classes']:>4} "
            f"{s['images']['train']:>6} {s['images']['val']:>5} {s['size']:>5}  {', '.join(s['packages'])}"
        )
    return "\n".join(rows)


def parse_which(which: str) -> list[str]:
    """``all`` or comma-separated set names, checked against DEV_SETS."""
    if which == "all":
        return list(DEV_SETS)
    names = [w.strip() for w in which.split(",") if w.strip()]
    unknown = [n for n in names if n not in DEV_SETS]
    if unknown or not names:
        raise SystemExit(
            f"--which: unknown set(s) {unknown or which!r}; choose from: all, {', '.join(DEV_SETS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="output folder (outside git); each set goes to OUT/<set>")
    ap.add_argument("--which", default="all", help="all, or comma-separated names: " + ", ".join(DEV_SETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="print the sets and exit")
    ap.add_argument("--packages", action="store_true", help="print the Debian packages needed and exit")
    args = ap.parse_args(argv)
    if args.list:
        print(list_sets())
        return 0
    if args.packages:
        print(" ".join(all_packages()))
        return 0
    if args.out is None:
        ap.error("--out is required (or --list / --packages)")
    names = parse_which(args.which)
    Image.MAX_IMAGE_PIXELS = None  # build_real_sets checks source sizes itself
    for name in names:
        spec = DEV_SETS[name]
        try:
            versions = common.package_versions(spec["packages"])
        except common.MissingSources as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        stats = BUILDERS[name](args.out / name, spec, args.seed, versions)
        print(f"{name}: built in {time.perf_counter() - t0:.0f} s -> {args.out / name}: {stats}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
