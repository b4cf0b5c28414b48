"""Detection data: COCO and YOLO readers, their bad-input messages, and COCO == YOLO after loading."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from tests.detection_helpers import coco_to_yolo, small_coco, write_coco, write_image

from b4transfer.data.coco import read_coco
from b4transfer.tasks.detection.data.coco import coco_splits
from b4transfer.tasks.detection.data.datamodule import DetectionDataModule
from b4transfer.tasks.detection.data.demo import demo_detection_splits, ensure_demo_detection
from b4transfer.tasks.detection.data.yolo import yolo_splits

MEAN = (0.485, 0.456, 0.406)


# ----------------------------------------------------------------------------------------------- COCO
def test_coco_maps_arbitrary_category_ids_to_contiguous_labels(tmp_path):
    path = small_coco(tmp_path)
    names, ids, samples, _ = read_coco(path, tmp_path / "train")
    assert (names, ids) == (["cat", "dog"], [3, 7])  # sorted by id
    first = next(s for s in samples if s.image_id == 10)
    np.testing.assert_array_equal(first.boxes, [[4, 5, 24, 15], [30, 8, 42, 38]])  # xywh -> xyxy
    np.testing.assert_array_equal(first.labels, [1, 0])  # dog (id 7) -> 1, cat (id 3) -> 0
    crowd = next(s for s in samples if s.image_id == 11)
    np.testing.assert_array_equal(crowd.iscrowd, [1])


def test_coco_image_without_annotations_is_kept_as_a_negative(tmp_path):
    small_coco(tmp_path)
    splits = coco_splits(tmp_path, val_fraction=0.5, seed=0)
    everything = splits.train + splits.val
    assert sorted(s.image_id for s in everything) == [10, 11, 12]
    negative = next(s for s in everything if s.image_id == 12)
    assert negative.num_boxes == 0 and negative.boxes.shape == (0, 4)


def test_coco_root_finds_the_standard_layout(tmp_path):
    small_coco(tmp_path, name="instances_train2017.json", folder="train2017")
    small_coco(tmp_path, name="instances_val2017.json", folder="images/val2017")
    splits = coco_splits(tmp_path)
    assert len(splits.train) == 3 and len(splits.val) == 3
    assert splits.train[0].path.parent == tmp_path / "train2017"
    assert splits.val[0].path.parent == tmp_path / "images" / "val2017"


def test_coco_explicit_files_for_other_layouts(tmp_path):
    path = small_coco(tmp_path / "elsewhere", name="mine.json", folder="pics")
    splits = coco_splits(train_json=path, train_images=tmp_path / "elsewhere" / "pics", val_fraction=0.34)
    assert (len(splits.train), len(splits.val)) == (2, 1)
    with pytest.raises(ValueError, match=r"data.train_json is set but data.train_images is not"):
        coco_splits(train_json=path)


def test_coco_missing_layout_names_the_keys(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"no annotations/instances_train\*.json.*data.train_json=FILE"
    ):
        coco_splits(tmp_path)
    small_coco(tmp_path, name="instances_train2017.json", folder="nowhere")
    with pytest.raises(FileNotFoundError, match=r"no image folder for it.*data.train_images=DIR"):
        coco_splits(tmp_path)


def _coco(tmp_path, annotations, images=None, categories=None):
    images = images or [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    categories = categories or [{"id": 1, "name": "cat"}]
    return write_coco(tmp_path, images=images, annotations=annotations, categories=categories)


def test_coco_annotation_pointing_at_a_missing_image(tmp_path):
    path = _coco(tmp_path, [{"id": 5, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(
        ValueError, match=r"annotation id 5 points at image_id 99, which is not in 'images'.*Fix"
    ):
        read_coco(path, tmp_path / "train")


def test_coco_image_file_missing_on_disk(tmp_path):
    path = _coco(tmp_path, [])
    (tmp_path / "train" / "a.png").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"1 of 1 image file\(s\) do not exist \(image id 1: .*a.png\).*Fix"
    ):
        read_coco(path, tmp_path / "train")


def test_coco_unknown_category_id(tmp_path):
    path = _coco(tmp_path, [{"id": 8, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(
        ValueError, match=r"annotation id 8 has category_id 42, which is not among the categories \[1\]"
    ):
        read_coco(path, tmp_path / "train")


def test_coco_malformed_json_names_the_line(tmp_path):
    path = small_coco(tmp_path)
    path.write_text('{\n  "images": [\n    {"id": 1,, "file_name": "a.png"}\n  ]\n}\n')
    with pytest.raises(ValueError, match=r"instances_train.json: malformed JSON at line 3, column 14"):
        read_coco(path, tmp_path / "train")


def test_coco_malformed_bbox_names_the_annotation(tmp_path):
    path = _coco(tmp_path, [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}])
    with pytest.raises(ValueError, match=r"annotation id 3 has bbox \[1, 2, 3\]; COCO boxes are 4 numbers"):
        read_coco(path, tmp_path / "train")


def test_coco_val_categories_must_match_train(tmp_path):
    small_coco(tmp_path)
    val = small_coco(tmp_path, name="instances_val.json", folder="val")
    data = json.loads(val.read_text())
    data["categories"][0]["name"] = "wolf"
    val.write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"instances_val.json: categories .* differ from the training file's"
    ):
        coco_splits(tmp_path)


def test_boxes_outside_the_image_are_clipped_and_degenerate_ones_dropped_with_one_warning(tmp_path, caplog):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [-5, 10, 20, 10]},  # reaches left: clipped
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 40, 30, 30]},  # reaches bottom-right: clipped
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5]},  # zero width: dropped
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [10, 10, 5, -3]},  # negative height: dropped
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [70, 10, 5, 5]},  # wholly outside: dropped
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},  # fine
    ]
    _coco(tmp_path, anns)
    with caplog.at_level(logging.WARNING):
        splits = coco_splits(tmp_path, val_fraction=0.5)
    sample = (splits.train + splits.val)[0]
    np.testing.assert_array_equal(sample.boxes, [[0, 10, 15, 20], [50, 40, 64, 48], [1, 1, 6, 6]])
    assert (splits.clipped_boxes, splits.dropped_boxes) == (2, 3)
    warnings = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "clipped 2 box(es)" in warnings[0] and "dropped 3" in warnings[0]
    assert "annotation id 3, annotation id 4, annotation id 5" in warnings[0]


# ----------------------------------------------------------------------------------------------- YOLO
def _yolo(root, labels: dict[str, str], names="names: [cat, dog]\n", size=(64, 48)):
    for stem, text in labels.items():
        write_image(root / "images" / "train" / f"{stem}.png", size)
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(names)
    return root


def test_yolo_reads_boxes_polygons_and_negatives(tmp_path):
    _yolo(tmp_path, {"a": "1 0.5 0.5 0.5 0.25\n\n", "b": "0 0.1 0.1 0.3 0.1 0.3 0.5\n", "c": None, "d": ""})
    splits = yolo_splits(tmp_path, val_fraction=0.25, seed=0)
    by_name = {s.path.stem: s for s in splits.train + splits.val}
    assert splits.class_names == ["cat", "dog"] and splits.category_ids == [0, 1]
    np.testing.assert_allclose(by_name["a"].boxes, [[16, 18, 48, 30]])
    np.testing.assert_array_equal(by_name["a"].labels, [1])
    np.testing.assert_allclose(by_name["b"].boxes, [[6.4, 4.8, 19.2, 24]], rtol=1e-6)  # polygon -> its box
    assert by_name["c"].num_boxes == 0 and by_name["d"].num_boxes == 0  # no / empty label file: negatives


def test_yolo_class_names_from_dict_yaml_or_classes_txt(tmp_path):
    _yolo(tmp_path / "a", {"x": "0 0.5 0.5 0.1 0.1\n"}, names="names:\n  0: zebra\n  1: ant\n")
    assert yolo_splits(tmp_path / "a", val_fraction=0.5).class_names == ["zebra", "ant"]
    _yolo(tmp_path / "b", {"x": "0 0.5 0.5 0.1 0.1\n"})
    (tmp_path / "b" / "data.yaml").unlink()
    (tmp_path / "b" / "classes.txt").write_text("zebra\nant\n")
    assert yolo_splits(tmp_path / "b", val_fraction=0.5).class_names == ["zebra", "ant"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.1", r"a.txt, line 2: 4 values in '0 0.5 0.5 0.1'; expected 5"),
        ("0 0.5 abc 0.1 0.1", r"a.txt, line 2: '0 0.5 abc 0.1 0.1' is not numbers"),
        ("2 0.5 0.5 0.1 0.1", r"a.txt, line 2: class '2' is not a class index in 0..1"),
        ("0.5 0.5 0.5 0.1 0.1", r"a.txt, line 2: class '0.5' is not a class index"),
    ],
)
def test_yolo_malformed_lines_name_file_and_line(tmp_path, line, message):
    _yolo(tmp_path, {"a": f"0 0.5 0.5 0.1 0.1\n{line}\n"})
    with pytest.raises(ValueError, match=message):
        yolo_splits(tmp_path)


def test_yolo_label_file_without_image(tmp_path):
    _yolo(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n"})
    (tmp_path / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "labels" / "train" / "classes.txt").write_text("cat\ndog\n")  # labelImg's names file: fine
    with pytest.raises(ValueError, match=r"1 label file\(s\) have no matching image .*ghost.txt.*Fix"):
        yolo_splits(tmp_path)


def test_yolo_boxes_outside_are_clipped_and_degenerate_dropped(tmp_path, caplog):
    _yolo(tmp_path, {"a": "0 0.95 0.5 0.2 0.2\n1 0.5 0.5 0 0.2\n1 1.5 0.5 0.2 0.2\n"})
    with caplog.at_level(logging.WARNING):
        splits = yolo_splits(tmp_path / "", val_fraction=0.5)
    sample = (splits.train + splits.val)[0]
    np.testing.assert_allclose(sample.boxes, [[54.4, 19.2, 64, 28.8]], rtol=1e-6)
    assert (splits.clipped_boxes, splits.dropped_boxes) == (1, 2)
    assert any("a.txt:2, a.txt:3" in r.getMessage() for r in caplog.records)


def test_yolo_without_class_names_says_how_to_add_them(tmp_path):
    _yolo(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n"})
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"no class names .*data.yaml.*classes.txt"):
        yolo_splits(tmp_path)


# --------------------------------------------------------------------------- COCO == YOLO, demo data
def test_same_data_as_coco_and_as_yolo_gives_identical_targets(tmp_path):
    coco_root = ensure_demo_detection(tmp_path / "coco", image_size=64, train_images=12, val_images=6)
    yolo_root = coco_to_yolo(coco_root, tmp_path / "yolo")
    coco, yolo = coco_splits(coco_root), yolo_splits(yolo_root)
    assert coco.class_names == yolo.class_names == ["circle", "square", "triangle"]
    assert sum(s.num_boxes for s in coco.train) > 10 and any(s.num_boxes == 0 for s in coco.train)
    for split in ("train", "val"):
        a, b = getattr(coco, split), getattr(yolo, split)
        assert [s.path.name for s in a] == [s.path.name for s in b]
        for sa, sb in zip(a, b):
            assert sa.size == sb.size
            np.testing.assert_allclose(sa.boxes, sb.boxes, atol=1e-4)
            np.testing.assert_array_equal(sa.labels, sb.labels)
    # ... and after the data module's (eval) transform: the tensors the model sees
    modules = [DetectionDataModule(s, image_size=48, mean=MEAN) for s in (coco, yolo)]
    for (xa, ta), (xb, tb) in zip(modules[0].dataset("val"), modules[1].dataset("val")):
        assert torch.equal(xa, xb)
        torch.testing.assert_close(ta["boxes"], tb["boxes"], atol=1e-4, rtol=0)
        assert torch.equal(ta["labels"], tb["labels"]) and torch.equal(ta["scale"], tb["scale"])


def test_demo_detection_is_deterministic_with_negatives(tmp_path):
    a = ensure_demo_detection(tmp_path / "a", image_size=64, train_images=10, val_images=3)
    b = ensure_demo_detection(tmp_path / "b", image_size=64, train_images=10, val_images=3)
    for rel in ("annotations/instances_train.json", "train/000003.png", "val/000002.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    splits = demo_detection_splits(a, image_size=64, train_images=10, val_images=3)
    assert splits.category_ids == [1, 2, 3] and not splits.skipped
    counts = [s.num_boxes for s in splits.train]
    assert 0 in counts and max(counts) >= 2
    for s in splits.train:  # tight boxes inside the image
        assert (s.boxes[:, 2:] > s.boxes[:, :2]).all() and (s.boxes[:, 2] <= s.size[0]).all()


def _exif_rotated_jpeg(path, stored=(64, 48), orientation=6):
    """A JPEG stored ``stored`` (width, height) whose EXIF orientation 6 turns it upright as 48x64."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", stored, (200, 10, 10)).save(path, exif=exif, quality=90)
    return path


def _one_image_coco(tmp_path, file_name, width, height):
    data = {
        "images": [{"id": 3, "file_name": file_name, "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [2, 2, 20, 10]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "annotations").mkdir(exist_ok=True)
    path = tmp_path / "annotations" / "instances_train.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_image_annotated_without_its_exif_rotation_is_refused(tmp_path):
    _exif_rotated_jpeg(tmp_path / "train" / "phone.jpg")
    path = _one_image_coco(tmp_path, "phone.jpg", 64, 48)  # the stored size: the tool ignored EXIF
    with pytest.raises(
        ValueError,
        match=r"1 of 1 image\(s\) are not the size the JSON gives them.*image id 3 phone.jpg: JSON 64x48, "
        r"file 48x64 \(stored 64x48, EXIF-rotated to 48x64\)\). Fix: .*orientation tag",
    ):
        read_coco(path, tmp_path / "train")
    path = _one_image_coco(tmp_path, "phone.jpg", 48, 64)  # annotated upright: accepted
    _, _, samples, _ = read_coco(path, tmp_path / "train")
    assert len(samples) == 1


def test_coco_image_resized_after_annotation_is_refused(tmp_path):
    write_image(tmp_path / "train" / "small.png", (32, 24))
    path = _one_image_coco(tmp_path, "small.png", 64, 48)
    with pytest.raises(
        ValueError, match=r"image id 3 small.png: JSON 64x48, file 32x24\)\. Fix: give 'width'/'height'"
    ):
        read_coco(path, tmp_path / "train")


def test_coco_images_turned_180_degrees_by_exif_are_counted_in_a_warning(tmp_path, caplog):
    _exif_rotated_jpeg(tmp_path / "train" / "upside.jpg", orientation=3)  # same size either way
    path = _one_image_coco(tmp_path, "upside.jpg", 64, 48)
    with caplog.at_level(logging.WARNING):
        _, _, samples, _ = read_coco(path, tmp_path / "train")
    assert len(samples) == 1
    assert "1 image(s) carry an EXIF orientation that flips or turns them by 180 degrees (upside.jpg)" in (
        caplog.text
    )


def test_yolo_split_first_layout_reads_like_the_ultralytics_one(tmp_path):
    """Roboflow's export: train/images + train/labels, valid/images + valid/labels, data.yaml at the root."""
    import shutil

    coco_root = ensure_demo_detection(tmp_path / "coco", image_size=64, train_images=8, val_images=4)
    yolo_root = coco_to_yolo(coco_root, tmp_path / "yolo")
    flat = tmp_path / "roboflow"
    shutil.copytree(yolo_root, flat, ignore=shutil.ignore_patterns("images", "labels"))
    for split, name in (("train", "train"), ("val", "valid")):
        for kind in ("images", "labels"):
            shutil.copytree(yolo_root / kind / split, flat / name / kind)
    a, b = yolo_splits(yolo_root), yolo_splits(flat)
    for split in ("train", "val"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert [s.path.name for s in sa] == [s.path.name for s in sb] and len(sa) > 0
        for x, y in zip(sa, sb):
            np.testing.assert_array_equal(x.boxes, y.boxes)
            np.testing.assert_array_equal(x.labels, y.labels)


def test_coco_root_finds_roboflows_export_layout(tmp_path):
    """train/_annotations.coco.json beside its images, valid/ for validation."""
    import shutil

    std = ensure_demo_detection(tmp_path / "std", image_size=64, train_images=6, val_images=3)
    rf = tmp_path / "rf"
    for split, folder in (("train", "train"), ("val", "valid")):
        shutil.copytree(std / split, rf / folder)
        shutil.copy(std / "annotations" / f"instances_{split}.json", rf / folder / "_annotations.coco.json")
    a, b = coco_splits(std), coco_splits(rf)
    assert a.class_names == b.class_names and a.category_ids == b.category_ids
    for split in ("train", "val"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert [s.path.name for s in sa] == [s.path.name for s in sb] and len(sa) > 0
        assert all(s.path.parent == rf / ("valid" if split == "val" else "train") for s in sb)
        for x, y in zip(sa, sb):
            np.testing.assert_array_equal(x.boxes, y.boxes)


def test_coco_categories_without_training_boxes_are_named_in_a_warning(tmp_path, caplog):
    path = _coco(
        tmp_path,
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        categories=[{"id": 0, "name": "cells"}, {"id": 1, "name": "cat"}],
    )
    with caplog.at_level(logging.WARNING):
        splits = coco_splits(
            train_json=path, train_images=tmp_path / "train", val_json=path, val_images=tmp_path / "train"
        )
    assert splits.class_names == ["cells", "cat"]
    assert "1 of 2 categories have no training annotations: cells (id 0)" in caplog.text
