"""COCO instances JSON, parsed once for every task that reads COCO: ``images``, ``annotations`` (``bbox`` as
``x, y, w, h`` pixels), ``categories``. A task's own reader (its ``data=`` source) builds its splits on
:func:`coco_files` and :func:`read_coco`.

:func:`coco_files` (``root=DIR``) finds the standard layout by itself::

    DIR/annotations/instances_train2017.json   DIR/train2017/*.jpg   (or DIR/images/train2017/)
    DIR/annotations/instances_val2017.json     DIR/val2017/*.jpg

(any suffix after ``instances_train`` / ``instances_val`` / ``instances_test``; without a val file a
seeded share of train is held out). Other layouts name the files: ``train_json`` + ``train_images``,
``val_json`` + ``val_images``. Category ids may be any integers: sorted by id they become the
contiguous labels ``0..K-1`` (their names are the class names; the ids are kept for results JSON).
``file_name`` is relative to the image folder. Crowd annotations (``iscrowd: 1``) are kept for
evaluation. Bad input stops at start-up with the file, the annotation id, the value and the fix;
boxes reaching outside their image are clipped and degenerate ones dropped (counted, one warning).
"""

from __future__ import annotations

import json
import logging
import numbers
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from b4transfer.data.boxes import BoxCleaner, DetectionSample, make_sample
from b4transfer.data.images import ImageLoadError, image_header, upright_size
from b4transfer.data.splits import DEFAULT_CHECK_THREADS, refuse_missing_images, shown
from b4transfer.errors import UserError, UserFileNotFoundError

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def load_json(path: Path, key: str) -> object:
    """Parse a JSON file; a syntax error names the file, line and column."""
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserFileNotFoundError(
            f"{key}={str(path)!r} {state}. Fix: point {key} at a COCO instances JSON file."
        )
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}. Fix: repair the file "
            "(e.g. `python -m json.tool FILE` shows the spot) or re-export it."
        ) from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e}). Fix: point {key} at a COCO JSON file.") from e


def _list(data: dict, name: str, path: Path, *, required: bool = True) -> list:
    value = data.get(name, None if required else [])
    if not isinstance(value, list):
        found = "no such key" if value is None else f"a {type(value).__name__}"
        raise UserError(
            f"{path}: '{name}' must be a list ({found}). Fix: use a COCO instances file with 'images', "
            "'annotations' and 'categories' lists."
        )
    return value


def _int(value, path: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{path}: {what} must be an integer, got {value!r}. Fix: correct it in the file.")
    return int(value)


def parse_categories(data: dict, path: Path) -> tuple[list[str], list[int]]:
    """Class names and category ids, sorted by id (the label order)."""
    cats = _list(data, "categories", path)
    if not cats:
        raise UserError(
            f"{path}: 'categories' is empty. Fix: list each class as {{'id': 1, 'name': 'cat'}}."
        )
    by_id: dict[int, str] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise UserError(f"{path}: categories[{i}] = {cat!r} needs an 'id' and a 'name'. Fix: add them.")
        cid = _int(cat["id"], path, f"categories[{i}] id")
        if cid in by_id:
            raise UserError(
                f"{path}: category id {cid} is listed twice. Fix: give each category its own id."
            )
        by_id[cid] = str(cat["name"])
    names = [by_id[i] for i in sorted(by_id)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{path}: category name(s) {dupes} used by several ids. Fix: make names unique.")
    return names, sorted(by_id)


def _images(data: dict, path: Path, image_dir: Path) -> dict[int, tuple[Path, tuple[int, int] | None]]:
    images: dict[int, tuple[Path, tuple[int, int] | None]] = {}
    for i, img in enumerate(_list(data, "images", path)):
        if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
            raise UserError(f"{path}: images[{i}] = {img!r} needs an 'id' and a 'file_name'. Fix: add them.")
        iid = _int(img["id"], path, f"images[{i}] id")
        if iid in images:
            raise UserError(
                f"{path}: image id {iid} is listed twice in 'images'. Fix: give each image one id."
            )
        w, h = img.get("width"), img.get("height")
        ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 for v in (w, h))
        images[iid] = (image_dir / str(img["file_name"]), (int(w), int(h)) if ok else None)
    refuse_missing_images(
        path,
        [(f"image id {iid}", file) for iid, (file, _) in images.items()],
        f"point the image folder (data.root, or data.train_images / data.val_images; now {image_dir}) at "
        "the folder 'file_name' is relative to, or remove those images from the JSON.",
    )
    _check_sizes(images, path)
    return images


def _file_sizes(file: Path) -> tuple[tuple[int, int], tuple[int, int], int] | None:
    try:
        return image_header(file)
    except ImageLoadError:  # unreadable: left for drop_unreadable to skip (or refuse)
        return None


def _check_sizes(images: dict[int, tuple[Path, tuple[int, int] | None]], path: Path) -> None:
    """Refuse images whose file is not the ``width`` x ``height`` the JSON (and so its boxes) says.

    The boxes are in the pixels of the image the annotator saw. b4transfer reads images upright (EXIF
    orientation applied, as browsers, ultralytics and detectron2 do); a file whose size differs — most
    often a phone photo whose EXIF tag rotates it by 90 degrees while the tool annotated the stored
    pixels, or an image resized after annotation — would silently get misplaced boxes.
    """
    listed = [(iid, file, size) for iid, (file, size) in images.items() if size is not None]
    with ThreadPoolExecutor(max_workers=DEFAULT_CHECK_THREADS) as pool:  # header reads only
        found = list(pool.map(lambda item: _file_sizes(item[1]), listed))
    bad = [(iid, file, size, f) for (iid, file, size), f in zip(listed, found) if f and f[1] != tuple(size)]
    if not bad:
        # A flip or a 180-degree turn (EXIF orientations 2-4) keeps the size: no check can tell whether
        # those were annotated upright, so say how many there are.
        flipped = [file.name for (_, file, _), f in zip(listed, found) if f and f[2] in (2, 3, 4)]
        if flipped:
            log.warning(
                "%s: %d image(s) carry an EXIF orientation that flips or turns them by 180 degrees (%s). "
                "b4transfer reads them upright; if they were annotated as stored (some tools ignore the "
                "tag), their boxes are misplaced. HINT: check one with mode=predict predict.draw=true on a "
                "trained model, or strip the tag.",
                path,
                len(flipped),
                shown(flipped, ", "),
            )
        return
    rotated = [b for b in bad if b[3][0] == tuple(b[2])]  # the JSON has the stored size: EXIF ignored

    def show(iid, file, size, sizes) -> str:
        (sw, sh), (uw, uh), _ = sizes
        stored = f" (stored {sw}x{sh}, EXIF-rotated to {uw}x{uh})" if (sw, sh) != (uw, uh) else ""
        return f"image id {iid} {file.name}: JSON {size[0]}x{size[1]}, file {uw}x{uh}{stored}"

    fix = (
        "the annotations of the EXIF-rotated image(s) were made on the stored pixels, ignoring the "
        "orientation tag: remove the tag so the file reads as annotated (e.g. `exiftool -Orientation= "
        "-n FILE`, or re-save the pixels without EXIF), or re-annotate the upright image"
        if len(rotated) == len(bad)
        else "give 'width'/'height' (and boxes) for the files as they are now, or use the files that "
        "were annotated"
    )
    raise UserError(
        f"{path}: {len(bad)} of {len(listed)} image(s) are not the size the JSON gives them, so their "
        f"boxes would be misplaced ({shown([show(*x) for x in bad])}). Fix: {fix}."
    )


def _bbox(ann: dict, path: Path, aid) -> list[float]:
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4) or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box
    ):
        raise UserError(
            f"{path}: annotation id {aid} has bbox {box!r}; COCO boxes are 4 numbers [x, y, width, height] "
            "in pixels. Fix: correct or delete that annotation."
        )
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def read_coco(
    json_path: str | Path,
    image_dir: str | Path,
    *,
    categories: tuple[list[str], list[int]] | None = None,
    key: str = "data.train_json",
    data: dict | None = None,
) -> tuple[list[str], list[int], list[DetectionSample], BoxCleaner]:
    """Read one COCO instances file into samples.

    Args:
        json_path: The instances JSON.
        image_dir: Folder that the images' ``file_name`` is relative to.
        categories: ``(names, ids)`` of the training file, which this file must agree with;
            ``None``: this file's own categories.
        key: The config key that named ``json_path``, for messages.
        data: The file's parsed JSON, when the caller has read it already (it is not read again).

    Returns:
        ``(class_names, category_ids, samples, cleaner)``; ``cleaner`` holds the box counts.

    Raises:
        FileNotFoundError: The JSON or an image file does not exist.
        ValueError: Malformed JSON, a missing list, an annotation of an unknown image or category,
            a malformed bbox, or categories that differ from the training file's.
    """
    path, image_dir = Path(json_path).expanduser(), Path(image_dir).expanduser()
    data = load_json(path, key) if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'.")
    names, ids = parse_categories(data, path)
    if categories is not None and (names, ids) != (list(categories[0]), list(categories[1])):
        raise UserError(
            f"{path}: categories {dict(zip(ids, names))} differ from the training file's "
            f"{dict(zip(categories[1], categories[0]))}. Fix: use the same 'categories' in every split."
        )
    label_of = {cid: i for i, cid in enumerate(ids)}
    images = _images(data, path, image_dir)
    per_image: dict[int, list[tuple[list[float], int, int, str]]] = {iid: [] for iid in images}
    for i, ann in enumerate(_list(data, "annotations", path)):
        aid = ann.get("id", f"#{i}") if isinstance(ann, dict) else f"#{i}"
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise UserError(
                f"{path}: annotation {aid} = {ann!r} needs 'image_id', 'category_id' and 'bbox'."
            )
        bad = [k for k in ("image_id", "category_id") if type(ann[k]) not in (int, str)]  # bool: not an id
        if bad:
            raise UserError(
                f"{path}: annotation id {aid} has {bad[0]} {ann[bad[0]]!r}; it must be one id (a number). "
                "Fix: give each annotation a single image_id and category_id (one annotation per object)."
            )
        if ann["image_id"] not in images:
            raise UserError(
                f"{path}: annotation id {aid} points at image_id {ann['image_id']!r}, which is not in "
                "'images'. Fix: add that image to 'images' or delete the annotation."
            )
        if ann["category_id"] not in label_of:
            raise UserError(
                f"{path}: annotation id {aid} has category_id {ann['category_id']!r}, which is not among "
                f"the categories {ids}. Fix: add the category or correct the annotation."
            )
        crowd = int(bool(ann.get("iscrowd", 0)))
        per_image[ann["image_id"]].append((_bbox(ann, path, aid), label_of[ann["category_id"]], crowd, aid))
    cleaner = BoxCleaner(path)
    samples = []
    for iid, (file, size) in images.items():
        anns = per_image[iid]
        if size is None:  # width/height missing from the JSON: read the file's header
            try:
                size = upright_size(file)
            except ImageLoadError:  # unreadable: left for drop_unreadable to skip (or refuse)
                samples.append(make_sample(file, [], [], image_id=iid, size=(1, 1)))
                continue
        boxes = np.array([a[0] for a in anns], np.float64).reshape(-1, 4)
        keep = cleaner(boxes, size, [f"annotation id {a[3]}" for a in anns])
        labels, crowd = [a[1] for a in anns], [a[2] for a in anns]
        samples.append(
            make_sample(
                file,
                boxes[keep],
                np.asarray(labels)[keep] if anns else [],
                np.asarray(crowd)[keep] if anns else [],
                image_id=iid,
                size=size,
            )
        )
    return names, ids, samples, cleaner


def _image_dir_for(root: Path, json_path: Path, split: str) -> Path:
    """The image folder for ``annotations/instances_<split><suffix>.json``: ``root/<split><suffix>``, ..."""
    suffix = json_path.stem[len(f"instances_{split}") :]
    candidates = [
        root / f"{split}{suffix}",
        root / "images" / f"{split}{suffix}",
        root / split,
        root / "images" / split,
    ]
    for folder in candidates:
        if folder.is_dir():
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise UserFileNotFoundError(
        f"data.root={str(root)!r}: found {json_path.name} but no image folder for it (tried {tried}). "
        f"Fix: put the images in {candidates[0]}, or set data.{split}_images=DIR explicitly."
    )


ROBOFLOW_JSON = "_annotations.coco.json"
ROBOFLOW_DIRS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}


def find_coco_layout(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """``{split: (json, image_dir)}`` under ``root`` (train required): the standard COCO layout, else
    Roboflow's export (``train/_annotations.coco.json`` beside the images; ``valid/``, ``test/``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserFileNotFoundError(
            f"data.root={str(root)!r} is not a folder. Fix: point it at the COCO dataset root."
        )
    found = {}
    for split in SPLITS:
        matches = sorted((root / "annotations").glob(f"instances_{split}*.json"))
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            raise UserError(
                f"data.root={str(root)!r}: several {split} annotation files ({names}). Fix: choose one with "
                f"data.{split}_json=FILE and data.{split}_images=DIR."
            )
        if matches:
            found[split] = (matches[0], _image_dir_for(root, matches[0], split))
    if "train" not in found:  # Roboflow's COCO export: <split>/_annotations.coco.json next to the images
        for split, folders in ROBOFLOW_DIRS.items():
            for folder in folders:
                if (root / folder / ROBOFLOW_JSON).is_file():
                    found[split] = (root / folder / ROBOFLOW_JSON, root / folder)
                    break
    if "train" not in found:
        raise UserFileNotFoundError(
            f"data.root={str(root)!r}: no annotations/instances_train*.json (nor train/{ROBOFLOW_JSON}). "
            "Fix: use the standard COCO layout (annotations/instances_train2017.json + train2017/), or name "
            "the files with data.train_json=FILE data.train_images=DIR (and data.val_json / data.val_images)."
        )
    return found


def coco_files(root: str | Path | None, **given: tuple) -> dict[str, tuple[Path, Path]]:
    """``{split: (instances json, image folder)}``: the layout found under ``root``, overridden per split by
    ``given[split] = (json, images)`` (both or neither set); train is required."""
    files: dict[str, tuple[Path, Path]] = find_coco_layout(root) if root not in (None, "") else {}
    for split, (js, imgs) in given.items():
        if js in (None, "") and imgs in (None, ""):
            continue
        if js in (None, "") or imgs in (None, ""):
            have, other = ("json", "images") if js not in (None, "") else ("images", "json")
            raise UserError(
                f"data.{split}_{have} is set but data.{split}_{other} is not. Fix: set both "
                f"(the instances JSON and the folder its file_name entries are relative to)."
            )
        files[split] = (Path(js).expanduser(), Path(imgs).expanduser())
    if "train" not in files:
        raise UserError(
            "data=coco needs data.root=DIR (standard COCO layout) or data.train_json=FILE with "
            "data.train_images=DIR. Fix: set one of them."
        )
    return files
