"""Folder and CSV readers, stratified splits and the skip-and-count policy for bad images."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from b4transfer.data.folder import scan_folder
from b4transfer.data.images import ImageLoadError
from b4transfer.data.splits import Sample, check_class_count, drop_unreadable, stratified_split
from b4transfer.tasks.classification.data.csvdata import read_csv


def _png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)
    return path


def _tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, n in counts.items():
        for i in range(n):
            _png(root / name / f"{i:03d}{ext}", value=i)
    return root


def _corrupt(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:600])
    (folder / "junk.png").write_bytes(b"garbage bytes")
    return [folder / "cut.jpg", folder / "junk.png"]


# ----------------------------------------------------------------- stratified split
def _samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(Path(f"{c}/{i}.png"), c) for c, n in counts.items() for i in range(n)]


def test_stratified_split_is_deterministic_and_stratified():
    samples = _samples({0: 50, 1: 10, 2: 2, 3: 1})
    train, val = stratified_split(samples, val_fraction=0.2, seed=3)
    again = stratified_split(samples, val_fraction=0.2, seed=3)
    other = stratified_split(samples, val_fraction=0.2, seed=4)
    assert (train, val) == again and val != other[1]
    per_class = {c: sum(s.target == c for s in val) for c in range(4)}
    assert per_class == {0: 10, 1: 2, 2: 1, 3: 0}  # >=1 for classes with 2+, singletons stay in train
    assert sorted(map(str, (s.path for s in train + val))) == sorted(str(s.path) for s in samples)


def test_stratified_split_multi_label_uses_first_label():
    samples = [Sample(Path(f"{i}.png"), (i % 2, 2)) for i in range(10)]
    _, val = stratified_split(samples, val_fraction=0.2, seed=0)
    assert sorted(s.target[0] for s in val) == [0, 1]


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.2"])
def test_val_fraction_is_validated(bad):
    with pytest.raises(ValueError, match=rf"data\.val_fraction .*{bad}"):
        stratified_split(_samples({0: 4, 1: 4}), val_fraction=bad, seed=0)


def test_check_class_count_names_source_and_classes():
    with pytest.raises(ValueError, match=r"/some/dir: found 1 class\(es\) \['cat'\].*at least 2"):
        check_class_count(["cat"], "/some/dir")


def test_drop_unreadable_skips_counts_and_warns_once(tmp_path, caplog):
    good = [Sample(_png(tmp_path / f"{i}.png"), 0) for i in range(3)]
    bad = [Sample(p, 1) for p in _corrupt(tmp_path / "bad")]
    with caplog.at_level(logging.WARNING, logger="b4transfer.data.splits"):
        kept, skipped = drop_unreadable(good + bad, num_threads=2)
    assert kept == good and [p for p, _ in skipped] == [s.path for s in bad]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 2 unreadable image(s) of 5" in warnings[0].getMessage()
    assert "cut.jpg" in warnings[0].getMessage()
    with pytest.raises(ImageLoadError, match=r"cut\.jpg.*2 unreadable image\(s\) of 5.*junk\.png"):
        drop_unreadable(good + bad, on_bad_image="error")
    with pytest.raises(ValueError, match=r"data\.on_bad_image='ignore'.*\['skip', 'error'\]"):
        drop_unreadable(good, on_bad_image="ignore")


# ----------------------------------------------------------------------- folders
def test_single_root_layout_splits_per_class(tmp_path):
    root = _tree(tmp_path / "ds", {"dog": 10, "cat": 5})
    splits = scan_folder(root, val_fraction=0.2, seed=0)
    assert splits.class_names == ["cat", "dog"] and splits.num_classes == 2
    assert (len(splits.train), len(splits.val), splits.test, splits.skipped) == (12, 3, [], [])
    assert sorted(s.target for s in splits.val) == [0, 1, 1]
    assert scan_folder(root, val_fraction=0.2, seed=0) == splits


def test_files_filtering_nested_uppercase_hidden(tmp_path):
    root = _tree(tmp_path / "ds", {"a": 2, "b": 2})
    _png(root / "a" / "nested" / "deep.PNG")
    _png(root / "a" / ".hidden.png")
    _png(root / ".cache" / "x.png")
    (root / "b" / "notes.txt").write_text("not an image")
    splits = scan_folder(root)
    paths = {s.path.name for s in splits.train + splits.val}
    assert "deep.PNG" in paths and ".hidden.png" not in paths and "notes.txt" not in paths
    assert splits.class_names == ["a", "b"] and len(splits.train + splits.val) == 5


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_train_val_test_layout(tmp_path, val_name):
    _tree(tmp_path / "ds" / "train", {"x": 3, "y": 3, "z": 2})
    _tree(tmp_path / "ds" / val_name, {"x": 1, "y": 2})
    _tree(tmp_path / "ds" / "test", {"z": 1})
    splits = scan_folder(tmp_path / "ds")
    assert splits.class_names == ["x", "y", "z"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 3, 1)
    assert splits.test[0].target == 2 and all("train" in str(s.path) for s in splits.train)


def test_train_without_val_gets_a_stratified_split(tmp_path):
    _tree(tmp_path / "ds" / "train", {"x": 5, "y": 5})
    splits = scan_folder(tmp_path / "ds", val_fraction=0.4)
    assert (len(splits.train), len(splits.val)) == (6, 4)


def test_val_class_missing_from_train_is_an_error(tmp_path):
    _tree(tmp_path / "ds" / "train", {"x": 2, "y": 2})
    _tree(tmp_path / "ds" / "val", {"x": 1, "w": 1})
    with pytest.raises(ValueError, match=r"val folder .*ds/val has class folder\(s\) \['w'\] .*\['x', 'y'\]"):
        scan_folder(tmp_path / "ds")


def test_layout_errors(tmp_path):
    _tree(tmp_path / "two" / "train", {"x": 2, "y": 2})
    _tree(tmp_path / "two" / "val", {"x": 1})
    _tree(tmp_path / "two" / "valid", {"x": 1})
    with pytest.raises(ValueError, match=r"several validation folders \['val', 'valid'\].*Fix"):
        scan_folder(tmp_path / "two")
    _tree(tmp_path / "half" / "val", {"x": 1, "y": 1})
    with pytest.raises(ValueError, match=r"half has \['val'\] but no train/ folder"):
        scan_folder(tmp_path / "half")


@pytest.mark.parametrize("root", [None, "", "  "])
def test_empty_root_value(root):
    with pytest.raises(ValueError, match=r"data\.root is empty .*Fix: set data\.root="):
        scan_folder(root)


def test_root_missing_or_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.root='.*nowhere'.*does not exist"):
        scan_folder(tmp_path / "nowhere")
    _png(tmp_path / "f.png")
    with pytest.raises(ValueError, match=r"data\.root='.*f\.png' is a file"):
        scan_folder(tmp_path / "f.png")


def test_root_without_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"data\.root: training folder .*empty has no class sub-folders"):
        scan_folder(tmp_path / "empty")
    _png(tmp_path / "loose" / "a.png")
    with pytest.raises(ValueError, match=r"holds images directly: move them into one sub-folder per class"):
        scan_folder(tmp_path / "loose")


def test_class_folder_without_images_names_it_and_the_extensions(tmp_path):
    root = _tree(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "c").mkdir()
    (root / "c" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"class folder .*ds/c holds no images \(accepted extensions: .jpg"):
        scan_folder(root)


def test_single_class_folder_is_an_error(tmp_path):
    root = _tree(tmp_path / "ds", {"only": 3})
    with pytest.raises(ValueError, match=r"ds: found 1 class\(es\) \['only'\].*at least 2"):
        scan_folder(root)


def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    root = _tree(tmp_path / "ds", {"a": 4, "b": 4})
    bad = _corrupt(root / "a")
    with caplog.at_level(logging.WARNING):
        splits = scan_folder(root)
    assert sorted(p for p, _ in splits.skipped) == sorted(bad)
    assert len(splits.train) + len(splits.val) == 8
    assert "Skipped 2 unreadable image(s) of 10" in caplog.text
    with pytest.raises(ImageLoadError, match=r"(cut\.jpg|junk\.png).*2 unreadable image\(s\)"):
        scan_folder(root, on_bad_image="error")
    with pytest.raises(ValueError, match=r"data\.on_bad_image='warn'"):
        scan_folder(root, on_bad_image="warn")


# --------------------------------------------------------------------------- CSV
def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def csv_images(tmp_path) -> Path:
    """``tmp/data/img/{0..9}.png`` next to where the CSVs go (``tmp/data``)."""
    for i in range(10):
        _png(tmp_path / "data" / "img" / f"{i}.png", value=20 * i)
    return tmp_path / "data"


def test_csv_relative_and_absolute_paths_without_split_column(csv_images):
    rows = [f"img/{i}.png,{'cat' if i < 5 else 'dog'}" for i in range(9)]
    rows.append(f"{csv_images / 'img' / '9.png'},dog")
    splits = read_csv(_csv(csv_images / "labels.csv", "path,label\n" + "\n".join(rows) + "\n"), seed=1)
    assert splits.class_names == ["cat", "dog"] and not splits.multi_label
    assert (len(splits.train), len(splits.val)) == (8, 2)
    assert sorted(s.target for s in splits.val) == [0, 1]
    assert all(s.path.is_file() and s.path.is_absolute() for s in splits.train)


def test_csv_split_column_aliases_and_custom_columns(csv_images):
    text = "\ufefffile , cls ,part\n" + "\n".join(
        f"img/{i}.png,{'ab'[i % 2]},{['train', 'TRAIN', 'valid', 'Validation', 'test'][i % 5]}"
        for i in range(10)
    )
    splits = read_csv(
        _csv(csv_images / "s.csv", text), path_column="file", label_column="cls", split_column="part"
    )
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 4, 2)
    assert [s.path.name for s in splits.test] == ["4.png", "9.png"]


def test_csv_multi_label_and_given_class_names(csv_images):
    text = (
        "path,label\nimg/0.png,dog cat\nimg/1.png,cat\nimg/2.png, bird  cat \nimg/3.png,dog\nimg/4.png,bird\n"
    )
    splits = read_csv(_csv(csv_images / "m.csv", text), multi_label=True, class_names=["dog", "cat", "bird"])
    assert splits.multi_label and splits.class_names == ["dog", "cat", "bird"]
    targets = {s.path.name: s.target for s in splits.train + splits.val}
    assert targets == {"0.png": (0, 1), "1.png": (1,), "2.png": (1, 2), "3.png": (0,), "4.png": (2,)}
    semi = read_csv(
        _csv(csv_images / "semi.csv", 'path,label\nimg/0.png,"a;b"\nimg/1.png,b\n'),
        multi_label=True,
        label_delimiter=";",
        val_fraction=0.5,
    )
    assert semi.class_names == ["a", "b"]


def test_csv_missing_file_and_empty_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.csv='.*nope\.csv'.*does not exist"):
        read_csv(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match=r"data\.csv is empty \(None\)"):
        read_csv(None)


def test_csv_missing_columns_lists_found_and_key(csv_images):
    path = _csv(csv_images / "c.csv", "filename,label\nimg/0.png,a\n")
    with pytest.raises(
        ValueError, match=r"c\.csv: no column 'path' \(data\.path_column='path'\).*\['filename', 'label'\]"
    ):
        read_csv(path)
    with pytest.raises(ValueError, match=r"no column 'target' \(data\.label_column='target'\)"):
        read_csv(path, path_column="filename", label_column="target")


@pytest.mark.parametrize(
    ("text", "kwargs", "pattern"),
    [
        ("path,label\nimg/0.png,a\nimg/1.png,\n", {}, r"e\.csv, line 3: empty label for 'img/1\.png'"),
        ("path,label\nimg/0.png,a\n,b\n", {}, r"e\.csv, line 3: empty 'path'"),
        (
            "path,label\nimg/0.png,a\nimg/1.png,zebra\n",
            {"class_names": ["a", "b"]},
            r"e\.csv, line 3: label\(s\) \['zebra'\] not in data\.class_names \['a', 'b'\]",
        ),
        (
            "path,label,split\nimg/0.png,a,train\nimg/1.png,b,holdout\n",
            {},
            r"e\.csv, line 3: unknown 'split' value 'holdout'.*\['test', 'train'",
        ),
        ("path,label\nimg/0.png,a\nimg/1.png,a\n", {}, r"e\.csv: found 1 class\(es\) \['a'\]"),
        ("", {}, r"e\.csv is empty"),
        ("path,label\n", {}, r"e\.csv has a header but no rows"),
        (
            "path,label\nimg/0.png,a\n",
            {"class_names": ["a", "b", "a"]},
            r"data\.class_names lists \['a'\] more",
        ),
    ],
)
def test_csv_row_errors_name_file_line_and_value(csv_images, text, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        read_csv(_csv(csv_images / "e.csv", text), **kwargs)


def test_csv_missing_images_counted_with_lines(csv_images):
    rows = "".join(f"img/missing{i}.png,{'ab'[i % 2]}\n" for i in range(7))
    path = _csv(csv_images / "miss.csv", "path,label\nimg/0.png,a\n" + rows)
    with pytest.raises(
        FileNotFoundError, match=r"miss\.csv: 7 of 8 image file\(s\) do not exist \(line 3: .*missing0"
    ):
        read_csv(path)


def test_csv_corrupt_images_skipped(csv_images):
    bad = _corrupt(csv_images / "img")
    rows = [f"img/{i}.png,{'ab'[i % 2]}" for i in range(6)] + [f"img/{p.name},a" for p in bad]
    splits = read_csv(_csv(csv_images / "bad.csv", "path,label\n" + "\n".join(rows)))
    assert len(splits.skipped) == 2 and len(splits.train) + len(splits.val) == 6
