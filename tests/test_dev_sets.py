"""scripts/build_dev_sets.py: every builder on tiny synthetic sources in tmp_path (no Debian package needed).

Each set is built twice (byte-identical: deterministic), read back with the library's own readers
(layouts), and checked for leakage (no source file, unit, icon family or font design in both splits).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from b4transfer.data.folder import scan_folder
from b4transfer.tasks.detection.data.coco import coco_splits
from b4transfer.tasks.segmentation.data.folder import seg_folder_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import build_dev_sets as bds  # noqa: E402
from dev_sets import common, emoji, glyphs, icons, text, wesnoth  # noqa: E402

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
SPEC = {"counts": {"train": 3, "val": 2}, "size": 64, "description": "test"}
VERSIONS = {"fake-package": "1.0"}


def blob(rng: np.random.Generator, side: int) -> Image.Image:
    """An RGBA ellipse of a random colour on a transparent square (a stand-in for a sprite or icon)."""
    yy, xx = np.mgrid[:side, :side]
    a, b = rng.uniform(0.25, 0.48, 2) * side
    alpha = (((xx - side / 2) / a) ** 2 + ((yy - side / 2) / b) ** 2 <= 1).astype(np.uint8) * 255
    rgb = np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (side, side, 3))
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def build_twice(tmp_path: Path, build) -> Path:
    """Builds into two folders; asserts identical bytes; returns the first."""
    a, b = tmp_path / "a", tmp_path / "b"
    build(a)
    build(b)
    assert digests(a) == digests(b), "the build is not deterministic"
    return a


def sources_of(out: Path) -> dict[str, set[str]]:
    rec = json.loads((out / "SOURCES.json").read_text())
    return {s: {x for items in rec["sources"][s].values() for x in items} for s in ("train", "val")}


def photos(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    return {
        s: [(f"{s}_photo.jpg", Image.fromarray(rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)))]
        for s in ("train", "val")
    }


@pytest.fixture
def wesnoth_root(tmp_path, monkeypatch) -> Path:
    """units/<race>/<unit>-attack-N.png (and a unit sub-folder), portraits/<race>/*.png, terrain tiles."""
    root, rng = tmp_path / "wesnoth", np.random.default_rng(1)
    for race in ("ra", "rb"):
        for u in range(4):
            for frame in ("", "-attack-1", "-defend"):
                path = root / "units" / race / f"unit{u}{frame}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                blob(rng, 72).save(path)
        (root / "units" / race / "rider").mkdir()
        blob(rng, 72).save(root / "units" / race / "rider" / "rider-ranged.png")
        for p in ("knight", "knight+female", "mage", "mage-2", "thief", "guard"):
            (root / "portraits" / race).mkdir(parents=True, exist_ok=True)
            blob(rng, 120).save(root / "portraits" / race / f"{p}.png")
    (root / "terrain" / "grass").mkdir(parents=True)
    for name in ("green", "green2", "dry", "dry2", "green-n"):  # green-n: a transition, not a base tile
        Image.new("RGBA", (72, 72), (*rng.integers(0, 256, 3).tolist(), 255)).save(
            root / "terrain/grass" / f"{name}.png"
        )
    monkeypatch.setattr(wesnoth, "ROOT", root)
    monkeypatch.setattr(wesnoth, "SPRITE_CLASSES", {"ra": ["ra"], "rb": ["rb"]})
    monkeypatch.setattr(wesnoth, "PORTRAIT_CLASSES", {"pa": ["ra"], "pb": ["rb"]})
    return root


def test_cls_sprites_layout_determinism_and_no_shared_unit(tmp_path, wesnoth_root):
    out = build_twice(tmp_path, lambda o: wesnoth.build_cls_sprites(o, SPEC, 0, VERSIONS))
    splits = scan_folder(out)
    assert splits.class_names == ["ra", "rb"]
    assert (len(splits.train), len(splits.val)) == (6, 4)
    src = sources_of(out)
    units = {s: {wesnoth.unit_family(Path(p)) for p in src[s]} for s in src}
    assert units["train"] and units["val"] and not units["train"] & units["val"]
    terrain = json.loads((out / "SOURCES.json").read_text())["terrain"]
    assert not set(terrain["train"]) & set(terrain["val"])
    assert not any("green-n" in t for t in terrain["train"] + terrain["val"])
    assert Image.open(next((out / "val" / "ra").iterdir())).size == (64, 64)


def test_seg_portraits_masks_follow_alpha(tmp_path, wesnoth_root):
    spec = {**SPEC, "size": 96}
    out = build_twice(tmp_path, lambda o: wesnoth.build_seg_portraits(o, spec, 0, VERSIONS, photos(tmp_path)))
    splits = seg_folder_splits(out)
    assert splits.class_names == ["background", "pa", "pb"]
    assert (len(splits.train), len(splits.val)) == (3, 2)
    masks = [np.asarray(Image.open(p)) for p in sorted((out / "masks").rglob("*.png"))]
    assert max(int(m.max()) for m in masks) <= 2 and any(m.max() > 0 for m in masks)
    src = sources_of(out)
    fams = {s: {wesnoth.portrait_family(Path(p)) for p in src[s]} for s in src}
    assert not fams["train"] & fams["val"]
    assert wesnoth.portrait_family(Path("humans/mage-red+female.png")) == "humans/mage-red"


def test_cls_icons_aliases_dropped_and_families_kept_together(tmp_path, monkeypatch):
    root, rng = tmp_path / "oxygen", np.random.default_rng(2)
    names = {"actions": ["go-next", "go-previous", "edit-copy", "edit-cut", "zoom-in", "list-add"],
             "apps": ["kate", "konsole", "dolphin", "okular", "gimp"]}  # fmt: skip
    for ctx, ns in names.items():
        (root / "48x48" / ctx).mkdir(parents=True)
        for n in ns:
            blob(rng, 48).save(root / "48x48" / ctx / f"{n}.png")
    (root / "64x64" / "actions").mkdir(parents=True)
    blob(rng, 64).save(root / "64x64" / "actions" / "zoom-in.png")  # the larger rendering wins
    (root / "48x48" / "apps" / "copy-alias.png").symlink_to(root / "48x48" / "actions" / "edit-copy.png")
    monkeypatch.setattr(icons, "ROOT", root)
    monkeypatch.setattr(icons, "CONTEXTS", ("actions", "apps"))
    found = icons.load_icons()
    assert "copy-alias" not in [i["name"] for i in found["apps"]]
    assert "edit-copy" not in [i["name"] for i in found["actions"]]  # aliased into two contexts: ambiguous
    assert [i["file"] for i in found["actions"] if i["name"] == "zoom-in"][0].endswith(
        "64x64/actions/zoom-in.png"
    )
    out = build_twice(tmp_path, lambda o: icons.build_cls_icons(o, SPEC, 0, VERSIONS))
    assert scan_folder(out).class_names == ["actions", "apps"]
    src = sources_of(out)
    fams = {s: {icons.icon_family("x", Path(p).stem) for p in src[s]} for s in src}
    assert not fams["train"] & fams["val"]


EMOJI_TEST = """# group: Smileys & Emotion
# subgroup: face-smiling
263A ; fully-qualified # \u263a E0.6 smiling face
263B ; fully-qualified # \u263b E0.6 black smiling face
2639 ; fully-qualified # \u2639 E0.7 frowning face
2602 ; unqualified # \u2602 E0.7 umbrella
# group: Component
1F3FB ; fully-qualified # x E1.0 light skin tone
# group: Animals & Nature
# subgroup: animal-mammal
2600 ; fully-qualified # \u2600 E0.6 sun
2601 ; fully-qualified # \u2601 E0.6 cloud
2605 ; fully-qualified # \u2605 E0.6 star
2663 ; fully-qualified # \u2663 E0.6 club suit
270B 1F3FB ; fully-qualified # x E1.0 raised hand: light skin tone
"""


def test_emoji_sets_parse_split_and_write(tmp_path, monkeypatch):
    (tmp_path / "emoji-test.txt").write_text(EMOJI_TEST, encoding="utf-8")
    monkeypatch.setattr(emoji, "EMOJI_TEST", tmp_path / "emoji-test.txt")
    monkeypatch.setattr(emoji, "FONT", MPL_FONTS / "DejaVuSans.ttf")  # monochrome stand-in
    monkeypatch.setattr(emoji, "CLS_GROUPS", {"smileys": "Smileys & Emotion", "nature": "Animals & Nature"})
    monkeypatch.setattr(emoji, "DET_CLASSES", {"face": ("Smileys & Emotion", "face-"),
                                               "animal": ("Animals & Nature", "animal-")})  # fmt: skip
    parsed = emoji.parse_emoji_test()
    assert [e["name"] for e in parsed][:3] == ["smiling face", "black smiling face", "frowning face"]
    assert len(parsed) == 7  # no unqualified, no Component, no skin tone
    assert emoji.family_key("man running") == emoji.family_key("woman running facing right")
    out = build_twice(tmp_path / "cls", lambda o: emoji.build_cls_emoji(o, SPEC, 0, VERSIONS))
    assert scan_folder(out).class_names == ["nature", "smileys"]
    src = sources_of(out)
    assert src["train"] and src["val"] and not src["train"] & src["val"]
    spec = {**SPEC, "size": 128}
    out = build_twice(
        tmp_path / "det", lambda o: emoji.build_det_emoji(o, spec, 0, VERSIONS, photos(tmp_path))
    )
    det = coco_splits(out)
    assert det.class_names == ["face", "animal"] and (len(det.train), len(det.val)) == (3, 2)
    coco = json.loads((out / "annotations" / "instances_train.json").read_text())
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128 and max(w, h) <= 80


@pytest.fixture
def fonts(monkeypatch):
    """Four fake packages of matplotlib's fonts: DejaVu Sans, DejaVu Serif, DejaVu Sans Mono, STIX."""
    packages = {
        "pkg-sans": sorted(MPL_FONTS.glob("DejaVuSans-*.ttf")) + [MPL_FONTS / "DejaVuSans.ttf"],
        "pkg-serif": sorted(MPL_FONTS.glob("DejaVuSerif*.ttf")),
        "pkg-mono": sorted(MPL_FONTS.glob("DejaVuSansMono*.ttf")),
        "pkg-stix": sorted(MPL_FONTS.glob("STIXGeneral*.ttf")),
    }
    monkeypatch.setattr(glyphs, "package_fonts", lambda pkg: packages[pkg])
    monkeypatch.setattr(glyphs, "LATIN_PACKAGES", list(packages))
    monkeypatch.setattr(glyphs, "SCRIPT_PACKAGES", list(packages))
    monkeypatch.setattr(glyphs, "LETTERS", "ABC")
    monkeypatch.setattr(glyphs, "SCRIPTS", {k: glyphs.SCRIPTS[k] for k in ("latin", "greek", "cyrillic")})
    return packages


def test_cls_glyphs_fonts_of_one_design_stay_in_one_split(tmp_path, fonts):
    out = build_twice(tmp_path, lambda o: glyphs.build_cls_glyphs(o, SPEC, 0, VERSIONS))
    splits = scan_folder(out)
    assert splits.class_names == ["A", "B", "C"] and (len(splits.train), len(splits.val)) == (9, 6)
    src = sources_of(out)
    pkg = {s: {p.rsplit("(", 1)[1] for p in src[s]} for s in src}
    assert pkg["train"] and pkg["val"] and not pkg["train"] & pkg["val"]


def test_det_text_boxes_hold_the_ink_and_fonts_do_not_leak(tmp_path, fonts):
    spec = {**SPEC, "size": 160}
    out = build_twice(tmp_path, lambda o: text.build_det_text(o, spec, 0, VERSIONS))
    det = coco_splits(out)
    assert det.class_names == ["latin", "greek", "cyrillic"] and (len(det.train), len(det.val)) == (3, 2)
    src = sources_of(out)
    assert src["train"] and src["val"] and not src["train"] & src["val"]
    rec = json.loads((out / "SOURCES.json").read_text())
    for img in rec["images"]["train"]:
        page = np.asarray(Image.open(out / "train" / img["file"]).convert("L"), np.float32)
        for o in img["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 160
            assert page[y0:y1, x0:x1].min() < page.mean() - 40  # dark ink inside the box


def test_group_split_keeps_families_and_near_duplicates_together():
    ids = [f"f{i}" for i in range(20)]
    fams = [f"fam{i // 4}" for i in range(20)]
    thumbs = np.zeros((20, 3), np.float32)
    thumbs[:, 0] = np.arange(20)
    thumbs[19] = thumbs[0]  # f19 looks like f0: must follow it
    train, val = common.group_split(ids, fams, 0.25, 3, thumbs, near=0.01)
    assert sorted(train + val) == list(range(20)) and 3 <= len(val) <= 8
    for i, j in [(0, 19), (0, 3), (4, 7)]:
        assert (i in val) == (j in val)


def test_cli_list_which_and_missing_packages(capsys, monkeypatch):
    assert bds.main(["--list"]) == 0
    listing = capsys.readouterr().out
    for name, spec in bds.DEV_SETS.items():
        assert name in listing and spec["task"] in listing
    tasks = [s["task"] for s in bds.DEV_SETS.values()]
    assert (
        tasks.count("classification") >= 5
        and tasks.count("detection") >= 3
        and tasks.count("segmentation") >= 2
    )
    assert {bds.DEV_SETS[n]["task"] for n in bds.HELD_OUT} == {"classification", "detection"}
    assert set(bds.BUILDERS) == set(bds.DEV_SETS)
    real = bds.real  # the openclipart sets are built by build_real_sets.py with its own constants
    assert bds.DEV_SETS["cls_clipart"]["counts"] == real.CLS_PER_CLASS
    assert bds.DEV_SETS["cls_clipart"]["classes"] == len(real.CLS_CLASSES)
    assert bds.DEV_SETS["det_clipart"]["images"] == real.DET_COUNTS
    assert bds.DEV_SETS["seg_clipart"]["images"] == real.SEG_COUNTS
    assert (
        bds.DEV_SETS["cls_clipart"]["size"] == real.CLS_SIZE
        and bds.DEV_SETS["det_clipart"]["size"] == real.DET_SIZE
    )
    with pytest.raises(SystemExit, match="unknown set"):
        bds.parse_which("cls_emoji,nope")
    monkeypatch.setitem(
        bds.DEV_SETS, "cls_icons", {**bds.DEV_SETS["cls_icons"], "packages": ["no-such-pkg-b4t"]}
    )
    assert bds.main(["--out", "/nonexistent-b4t", "--which", "cls_icons"]) == 2
    assert "apt-get install --no-install-recommends no-such-pkg-b4t" in capsys.readouterr().err
