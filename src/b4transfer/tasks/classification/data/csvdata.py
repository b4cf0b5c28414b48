"""CSV datasets: one ``path,label[,split]`` row per image.

Paths are relative to the CSV's folder (absolute paths work too). The optional split
column holds ``train`` / ``val`` / ``test`` (``valid`` and ``validation`` mean ``val``);
without it, or with no val rows, a seeded stratified share of train becomes val. For
multi-label data the label column holds several labels, e.g. ``"cat dog"``. Messages
give *line* numbers in the file (the header is line 1).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from b4transfer.data.splits import (
    DatasetSplits,
    Sample,
    SplitOptions,
    assemble_splits,
    check_class_count,
    refuse_missing_images,
    shown,
)
from b4transfer.errors import UserError, UserFileNotFoundError

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class _Row:
    line: int
    path: str
    labels: list[str]
    split: str | None


def _open_csv(csv_path: str | Path | None) -> Path:
    if csv_path is None or str(csv_path).strip() == "":
        raise UserError(f"data.csv is empty ({csv_path!r}). Fix: set data.csv=/path/to/labels.csv.")
    path = Path(csv_path).expanduser()
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserFileNotFoundError(
            f"data.csv={str(csv_path)!r}: {path.resolve()} {state}. Fix: point data.csv at a "
            "CSV file with a header row such as 'path,label' (relative paths resolve against the "
            "working directory, which Hydra may change; prefer an absolute path)."
        )
    return path


def _column(header: list[str], wanted: str, key: str, path: Path) -> str:
    if wanted not in header:
        raise UserError(
            f"{path}: no column {wanted!r} ({key}={wanted!r}); the header has {header}. Fix: rename the "
            f"column in the CSV or set {key} to one of {header}."
        )
    return wanted


def _split_labels(text: str, multi_label: bool, delimiter: str) -> list[str]:
    if not multi_label:
        return [text.strip()] if text.strip() else []
    parts = text.split() if delimiter.strip() == "" else text.split(delimiter)
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _iter_rows(path: Path, columns: dict[str, str], multi_label: bool, delimiter: str) -> Iterator[_Row]:
    """Yield the CSV's rows; validates the header, empty paths and empty labels."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        if not header:
            raise UserError(
                f"{path} is empty. Fix: add a header row such as 'path,label' and one row per image."
            )
        reader.fieldnames = header
        path_col = _column(header, columns["path"], "data.path_column", path)
        label_col = _column(header, columns["label"], "data.label_column", path)
        split_col = columns["split"] if columns["split"] in header else None
        for row in reader:
            line = reader.line_num
            file_text, label_text = (row.get(path_col) or "").strip(), row.get(label_col) or ""
            if not file_text:
                raise UserError(
                    f"{path}, line {line}: empty {path_col!r}. Fix: give the image path or delete the row."
                )
            labels = _split_labels(label_text, multi_label, delimiter)
            if not labels:
                raise UserError(
                    f"{path}, line {line}: empty label for {file_text!r}. Fix: fill in column "
                    f"{label_col!r} or delete the row."
                )
            split = (row.get(split_col) or "").strip().lower() if split_col else None
            if split_col and split not in SPLIT_ALIASES:
                raise UserError(
                    f"{path}, line {line}: unknown {split_col!r} value {row.get(split_col)!r}. Fix: use one "
                    f"of {sorted(SPLIT_ALIASES)} (or drop the column to split automatically)."
                )
            yield _Row(line, file_text, labels, SPLIT_ALIASES[split] if split_col else None)


def _resolve_classes(rows: list[_Row], class_names: list[str] | None, path: Path) -> list[str]:
    if class_names is None:
        return sorted({label for row in rows for label in row.labels})
    known = set(class_names)
    if len(known) != len(class_names):
        dupes = sorted({name for name in class_names if list(class_names).count(name) > 1})
        raise UserError(f"data.class_names lists {dupes} more than once. Fix: list each class once.")
    for row in rows:
        unknown = [label for label in row.labels if label not in known]
        if unknown:
            raise UserError(
                f"{path}, line {row.line}: label(s) {unknown} not in data.class_names {list(class_names)}. "
                "Fix: add them to data.class_names, correct the row, or set data.class_names=null to "
                "use the labels found in the CSV."
            )
    return list(class_names)


def _resolve_paths(rows: list[_Row], path: Path) -> list[Path]:
    files = [Path(row.path).expanduser() for row in rows]
    files = [f if f.is_absolute() else path.parent / f for f in files]
    refuse_missing_images(
        path,
        [(f"line {row.line}", file) for row, file in zip(rows, files)],
        f"correct the paths (relative paths are resolved against the CSV's folder {path.parent}) or delete "
        "those rows.",
    )
    return files


CONFLICTING_LABELS = ("error", "keep")


def check_conflicting_rows(rows: list[_Row], files: list[Path], path: Path, conflicting_labels: str) -> None:
    """Refuse an image listed on several rows with different labels (unless ``conflicting_labels="keep"``).
    Rows repeating an image with the same label are left to the audit (a duplicate, or leakage across
    splits)."""
    if conflicting_labels not in CONFLICTING_LABELS:
        raise UserError(
            f"data.conflicting_labels={conflicting_labels!r} is not an option; choose one of "
            f"{', '.join(CONFLICTING_LABELS)}."
        )
    by_file: dict[Path, list[_Row]] = {}
    for row, file in zip(rows, files):
        by_file.setdefault(file.resolve(), []).append(row)
    clashes = [rs for rs in by_file.values() if len({tuple(sorted(r.labels)) for r in rs}) > 1]
    if clashes and conflicting_labels == "error":
        listed = shown([
            f"{rs[0].path!r} on lines " + ", ".join(f"{r.line} ({' '.join(r.labels)})" for r in rs)
            for rs in clashes
        ])
        raise UserError(
            f"{path}: {len(clashes)} image(s) are listed with conflicting labels: {listed}. Fix: keep one "
            "row (one label) per image, or set data.conflicting_labels=keep to train on every row."
        )


def read_csv(
    csv_path: str | Path | None,
    *,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str = "split",
    multi_label: bool = False,
    label_delimiter: str = " ",
    class_names: list[str] | None = None,
    conflicting_labels: str = "error",
    **split: Any,
) -> DatasetSplits:
    """Read a CSV of image paths and labels into train/val(/test) splits.

    Args:
        csv_path: The CSV file (with a header row).
        path_column: Column of image paths, relative to the CSV's folder or absolute.
        label_column: Column of labels (several, separated by ``label_delimiter``, if
            ``multi_label``).
        split_column: Optional column of ``train``/``val``/``test``; ignored if absent.
        multi_label: Read several labels per row; targets become tuples of indices.
        label_delimiter: Separator of labels in multi-label rows (``" "``: any whitespace).
        class_names: The classes, in index order; ``None``: the sorted labels found.
        **split: The :class:`~b4transfer.data.splits.SplitOptions`: ``val_fraction`` (share of each class
            held out when there are no val rows), ``seed`` (of that split) and ``on_bad_image`` (``"skip"`` or
            ``"error"`` for unreadable images).
        conflicting_labels: ``"error"``: refuse an image listed with different labels on several rows;
            ``"keep"``: keep every row.

    Returns:
        The dataset splits.

    Raises:
        FileNotFoundError: The CSV or some image file does not exist.
        ValueError: Bad header, row, label, split value, option, or fewer than two classes.
        ImageLoadError: ``on_bad_image="error"`` and an image is unreadable.
    """
    options = SplitOptions(**split)
    path = _open_csv(csv_path)
    columns = {"path": path_column, "label": label_column, "split": split_column}
    rows = list(_iter_rows(path, columns, multi_label, label_delimiter))
    if not rows:
        raise UserError(f"{path} has a header but no rows. Fix: add one row per image.")
    names = _resolve_classes(rows, class_names, path)
    check_class_count(names, path)
    index = {name: i for i, name in enumerate(names)}
    tagged: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    files = _resolve_paths(rows, path)
    check_conflicting_rows(rows, files, path, conflicting_labels)
    for row, file in zip(rows, files):
        ids = sorted(index[label] for label in row.labels)
        target = tuple(ids) if multi_label else ids[0]
        tagged[row.split or "train"].append(Sample(file, target, origin=f"{path.name} line {row.line}"))
    return assemble_splits(names, tagged, source=path, options=options, multi_label=multi_label)
