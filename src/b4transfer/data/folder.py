"""Image-folder datasets: one sub-folder per class, optionally under train/ val/ test/.

Two layouts are read::

    root/<class>/**/*.jpg                    # one pool: seeded, stratified val split
    root/train/<class>/...  root/val/<class>/...  [root/test/<class>/...]

``valid/`` and ``validation/`` are accepted for ``val/``. Class names are the sorted
sub-folder names of the training folder. Hidden files and folders are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from b4transfer.data.images import IMG_EXTENSIONS
from b4transfer.data.splits import (
    DatasetSplits,
    Sample,
    SplitOptions,
    assemble_splits,
)
from b4transfer.errors import UserError, UserFileNotFoundError

VAL_DIR_NAMES = ("val", "valid", "validation")
_LAYOUT_HINT = (
    "Expected root/<class>/<image> (one sub-folder per class) or root/train/<class>/<image> "
    "plus root/val/<class>/<image>"
)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted, hidden files/folders ignored.

    Args:
        folder: Folder to search.

    Returns:
        Paths whose extension (any case) is in ``IMG_EXTENSIONS``.
    """
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMG_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found)


def _check_root(root: str | Path | None) -> Path:
    if root is None or str(root).strip() == "":
        raise UserError(
            f"data.root is empty ({root!r}). Fix: set data.root=/path/to/images. {_LAYOUT_HINT}."
        )
    path = Path(root).expanduser()
    if not path.exists():
        raise UserFileNotFoundError(
            f"data.root={str(root)!r}: folder {path.resolve()} does not exist. "
            "Fix: check the path (relative paths are resolved against the working directory, "
            "which Hydra may change; prefer an absolute path)."
        )
    if not path.is_dir():
        raise UserError(
            f"data.root={str(root)!r} is a file, not a folder. Fix: point data.root at the image "
            "folder; for a CSV of path,label rows use the csv data config instead."
        )
    return path


def _read_classes(folder: Path, what: str) -> dict[str, list[Path]]:
    """``{class_name: images}`` for each visible sub-folder of ``folder``."""
    class_dirs = _visible_dirs(folder)
    if not class_dirs:
        loose = (
            " It holds images directly: move them into one sub-folder per class."
            if list_images(folder)
            else ""
        )
        raise UserError(
            f"data.root: {what} folder {folder} has no class sub-folders.{loose} {_LAYOUT_HINT}."
        )
    classes = {}
    for class_dir in class_dirs:
        images = list_images(class_dir)
        if not images:
            raise UserError(
                f"data.root: class folder {class_dir} holds no images (accepted extensions: "
                f"{', '.join(IMG_EXTENSIONS)}, any case). Fix: add images or remove the folder."
            )
        classes[class_dir.name] = images
    return classes


def _find_val_dir(root: Path) -> Path | None:
    present = [root / name for name in VAL_DIR_NAMES if (root / name).is_dir()]
    if len(present) > 1:
        raise UserError(
            f"data.root={root}: found several validation folders {[p.name for p in present]}. "
            "Fix: keep only one of them (merge or rename the others)."
        )
    return present[0] if present else None


def _to_samples(
    classes: dict[str, list[Path]], class_names: list[str], folder: Path, what: str
) -> list[Sample]:
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise UserError(
            f"data.root: {what} folder {folder} has class folder(s) {unknown} that are not in the "
            f"training folder's classes {class_names}. Fix: add those classes to the training "
            "folder, or rename/remove them here (class names must match exactly)."
        )
    index = {name: i for i, name in enumerate(class_names)}
    return [Sample(path, index[name]) for name, images in classes.items() for path in images]


def _check_layout(root: Path) -> None:
    """A val/ or test/ folder without train/ is a half split layout, not a class."""
    split_dirs = [name for name in (*VAL_DIR_NAMES, "test") if (root / name).is_dir()]
    if split_dirs and not (root / "train").is_dir():
        raise UserError(
            f"data.root={root} has {split_dirs} but no train/ folder. Fix: put the training images "
            f"in {root / 'train'}/<class>/, or if {split_dirs} are really class names, rename them."
        )


def scan_folder(
    root: str | Path | None, **split: Any
) -> DatasetSplits:
    """Read an image-folder dataset into train/val(/test) splits.

    Args:
        root: Dataset folder (see the module docstring for the layouts).
        **split: The :class:`~b4transfer.data.splits.SplitOptions`: ``val_fraction`` (share of each class
            held out for validation when there is no ``val/`` folder), ``seed`` (of that split) and
            ``on_bad_image`` (``"skip"``: leave unreadable images out, counted in
            ``DatasetSplits.skipped``; ``"error"``: raise at start-up).

    Returns:
        The dataset splits.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: An empty root/class folder, fewer than two classes, bad options.
        ImageLoadError: ``on_bad_image="error"`` and an image is unreadable.
    """
    options = SplitOptions(**split)
    path = _check_root(root)
    _check_layout(path)
    train_dir = path / "train" if (path / "train").is_dir() else path
    train_classes = _read_classes(train_dir, "training")
    class_names = sorted(train_classes)
    tagged = {"train": _to_samples(train_classes, class_names, train_dir, "training")}
    if train_dir != path:
        val_dir = _find_val_dir(path)
        for name, folder in (("val", val_dir), ("test", path / "test")):
            if folder is not None and folder.is_dir():
                tagged[name] = _to_samples(_read_classes(folder, name), class_names, folder, name)
    return assemble_splits(class_names, tagged, source=path, options=options)
