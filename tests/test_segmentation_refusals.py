"""Semantic-mask input that used to train silently wrong or crash mid-epoch (issue 24, "Bad input and odd
combinations"): each is now refused at start-up in one line naming the file or key, the value and the
fix, or read the way the user meant."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image
from tests.conftest import TINY, compose_cfg
from tests.test_segmentation_data import one_line_error, squares, write_pair

from b4transfer import tasks
from b4transfer.data.kfold import fold_splits
from b4transfer.modes import run
from b4transfer.tasks.segmentation.data.coco import coco_semantic_splits, rle_counts
from b4transfer.tasks.segmentation.data.datamodule import MaskDataModule
from b4transfer.tasks.segmentation.data.folder import seg_folder_splits
from b4transfer.tasks.segmentation.data.masks import read_mask
from b4transfer.tasks.segmentation.predict import mask_png

MEAN = (0.485, 0.456, 0.406)


# ------------------------------------------------------- 0/255 binary masks (the object was the ignore index)
def test_binary_0_255_masks_with_two_classes_are_read_as_0_and_1_and_logged(tmp_path, caplog):
    for i in range(3):
        write_pair(tmp_path, None, f"a{i}", squares(value=255))
    (tmp_path / "classes.txt").write_text("background\nobject\n")
    with caplog.at_level(logging.WARNING):
        splits = seg_folder_splits(tmp_path, val_fraction=0.34)
    assert splits.binary and splits.class_names == ["background", "object"]
    assert splits.class_pixels == [2 * (40 * 48 - 320), 2 * 320]  # the object is counted, not ignored
    assert "255 as class 1 ('object'), not as the ignore index" in caplog.text
    _, target = MaskDataModule(splits, image_size=48, mean=MEAN, augment=False).dataset("train")[0]
    assert (target == 1).sum() == 320 and set(target.unique().tolist()) <= {0, 1, 255}  # 255: padding only
    no_names = tmp_path / "no_names"
    for i in range(2):
        write_pair(no_names, None, f"a{i}", squares(value=255))
    assert seg_folder_splits(no_names).class_names == ["class_0", "class_1"]  # was: "1 class(es)"


def test_masks_with_0_1_and_255_keep_255_as_the_ignore_index(tmp_path):
    mask = squares(value=1)
    mask[0, :] = 255  # a VOC-style border
    for i in range(2):
        write_pair(tmp_path, None, f"a{i}", mask)
    (tmp_path / "classes.txt").write_text("background\nobject\n")
    splits = seg_folder_splits(tmp_path)
    assert not splits.binary  # one image trains; its border row is ignored, not counted
    assert splits.class_pixels == [40 * 48 - 320 - 48, 320]


# ------------------------------------------------------------------ the ignore index is a class
def test_an_ignore_index_that_is_a_class_is_refused_naming_both(tmp_path):
    for i in range(2):
        write_pair(tmp_path, None, f"a{i}", squares(value=1))
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    one_line_error(
        lambda: seg_folder_splits(tmp_path, ignore_index=0),
        "data.ignore_index=0 is class 0 ('background') of the 2 classes",
        "left out of the loss and the metrics",
        "Fix: set data.ignore_index to a value no class uses (>= 2",
    )


def _many_categories_coco(tmp_path: Path, n: int) -> Path:
    (tmp_path / "train").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "train" / "b.png")
    last = [[0, 0, 20, 0, 20, 20, 0, 20]]
    data = {
        "images": [
            {"id": i, "file_name": f"{name}.png", "width": 40, "height": 30}
            for i, name in ((1, "a"), (2, "b"))
        ],
        "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(n)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": n, "bbox": [0, 0, 20, 20], "segmentation": last},
            {"id": 2, "image_id": 2, "category_id": 255, "bbox": [0, 0, 20, 20], "segmentation": last},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_with_more_categories_than_the_ignore_index_leaves_room_for_is_refused(tmp_path):
    path = _many_categories_coco(tmp_path, 300)
    read = lambda **kw: coco_semantic_splits(train_json=path, train_images=tmp_path / "train", **kw)  # noqa: E731
    one_line_error(
        read,
        "300 categories + background = 301 classes reach data.ignore_index=255",
        "category 'c254' (class 255)",
        "Fix: data.ignore_index=65535",
    )
    splits = read(ignore_index=65535, val_fraction=0.5)
    assert splits.num_classes == 301 and splits.ignore_index == 65535
    rendered = {int(s.mask.render(30, 40)[5, 5]) for s in splits.train + splits.val}
    assert rendered == {300, 255}  # category id 300 -> class 300, category id 255 -> class 255: both kept
    pixels = splits.class_pixels
    assert sum(pixels[255:]) > 0 and sum(pixels) <= 40 * 30  # one image trains, its object counted


def test_predicted_masks_of_more_than_256_classes_are_16_bit_pngs(tmp_path):
    mask = np.array([[0, 255], [256, 300]], np.int32)
    mask_png(mask, [(0, 0, 0)] * 301).save(tmp_path / "m.png")
    assert (read_mask(tmp_path / "m.png") == mask).all()
    mask_png(mask.clip(0, 2), [(0, 0, 0)] * 3).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"


# ------------------------------------------------------------------ crashes mid-training, now at start-up
def test_a_decompression_bomb_mask_is_refused_at_start_up(tmp_path, monkeypatch):
    write_pair(tmp_path, None, "a", squares(value=1))
    write_pair(tmp_path, None, "b", squares(value=1))
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")  # small image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # the 40x48 masks are > 2x the limit: a "bomb"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "b.jpg")
    one_line_error(
        lambda: seg_folder_splits(tmp_path),
        "a.png is too large to decode safely",
        "decompression bomb",
        "Fix: save the mask at its image's size",
    )


def _coco_with(tmp_path: Path, segmentation) -> Path:
    (tmp_path / "train").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": segmentation}
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))  # NaN / Infinity: JSON literals Python writes and reads
    return path


@pytest.mark.parametrize(
    ("segmentation", "why"),
    [
        ({"size": [30, 40], "counts": "PP\x7f"}, "its 'counts' are not a COCO RLE"),
        ({"size": [30, 40], "counts": "0"}, "its run lengths sum to 0"),  # pycocotools decodes garbage
        ({"size": [30, 40], "counts": [600, -5, 605]}, "negative runs: 1"),
        ({"size": [30, 40], "counts": [600, "x"]}, "its 'counts' are not a COCO RLE"),
        ([[0, 0, 10, float("nan"), 10, 10]], "a coordinate that is not a finite number"),
        ([[0, 0, 1e12, 0, 10, 10]], "reaches far outside the 40x30 image (x 0..1e+12"),
        ([[0, 0, 10, 0, 10, float("inf")]], "a coordinate that is not a finite number"),
    ],
)
def test_coco_segmentations_that_cannot_be_drawn_are_refused_when_read(tmp_path, segmentation, why):
    path = _coco_with(tmp_path, segmentation)
    one_line_error(
        lambda: coco_semantic_splits(train_json=path, train_images=tmp_path / "train"),
        "instances.json: annotation id 7 has a segmentation that cannot be drawn",
        why,
        "Fix: correct or re-export that annotation",
    )


def test_valid_rle_and_polygons_slightly_outside_the_image_are_kept(tmp_path):
    from pycocotools import mask as mask_utils

    area = np.zeros((30, 40), np.uint8, order="F")
    area[5:15, 5:25] = 1
    rle = mask_utils.encode(area)
    runs = rle_counts(rle["counts"])  # the Python decoder agrees with pycocotools
    assert sum(runs) == 1200 and (area == np.repeat(np.arange(len(runs)) % 2, runs).reshape(40, 30).T).all()
    for segm in ({"size": [30, 40], "counts": rle["counts"].decode()}, [[-2, -1, 41, 0, 41, 31, 0, 31]]):
        path = _coco_with(tmp_path, segm)
        splits = coco_semantic_splits(train_json=path, train_images=tmp_path / "train")
        assert splits.train[0].mask.render(30, 40).sum() > 0


# ------------------------------------------------------------------ JPEG masks (artefacts -> 229 classes)
def test_jpeg_masks_are_refused_naming_a_file_and_the_png_fix(tmp_path):
    for i in range(2):
        write_pair(tmp_path, None, f"a{i}", squares(value=1))
        (tmp_path / "masks" / f"a{i}.png").unlink()
        Image.fromarray(squares(value=200)).save(tmp_path / "masks" / f"a{i}.jpg", quality=75)
    one_line_error(
        lambda: seg_folder_splits(tmp_path),
        "2 mask(s) are JPEG files",
        "a0.jpg",
        "lossy compression",
        "Fix: save the masks as PNG (lossless)",
    )
    for i in range(2):  # a JPEG named .png
        (tmp_path / "masks" / f"a{i}.jpg").rename(tmp_path / "masks" / f"a{i}.png")
    one_line_error(
        lambda: seg_folder_splits(tmp_path), "is a JPEG (whatever its name)", "Fix: save the masks"
    )


# ------------------------------------------------------------------ data.palette from the command line
def test_a_palette_given_on_the_command_line_reaches_the_reader(tmp_path):
    palette = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    for i in range(2):
        write_pair(tmp_path, None, f"a{i}", squares(value=1))
        Image.fromarray(palette[squares(value=1)]).save(tmp_path / "masks" / f"a{i}.png")  # RGB masks
    cfg = compose_cfg(
        "task=segmentation", "data=seg_folder", f"data.root={tmp_path}", "data.palette=[[0,0,0],[255,0,0]]"
    )
    splits = instantiate(cfg.data.source)
    assert splits.palette == [(0, 0, 0), (255, 0, 0)] and splits.class_pixels[1] == 320


# ------------------------------------------------------------------ k-fold: pixel counts per fold
def test_kfold_folds_count_their_own_training_pixels(tmp_path):
    for i in range(5):
        mask = np.zeros((40, 48), np.uint8)
        mask[: 4 * (i + 1), :10] = 1  # image i: 40 (i + 1) object pixels
        write_pair(tmp_path, None, f"a{i}", mask)
    (tmp_path / "classes.txt").write_text("background\nobject\n")
    splits = seg_folder_splits(tmp_path, val_fraction=0.2)
    seen = set()
    for fold in range(5):
        part = fold_splits(splits, k=5, index=fold, source="test")
        expected = sum(int((read_mask(s.mask) == 1).sum()) for s in part.train)
        assert part.class_pixels == [4 * 40 * 48 - expected, expected]
        seen.add(expected)
    assert len(seen) == 5  # each fold its own counts (they were the original split's for every fold)


# ------------------------------------------------------------------ end to end: binary masks, a k-fold fold
@pytest.fixture(scope="module")
def binary_fold_run(tmp_path_factory):
    """One k-fold fold trained on 0/255 masks with class weights from the fold's own pixels."""
    tmp = tmp_path_factory.mktemp("binary")
    data = tmp / "data"
    rng = np.random.default_rng(0)
    for i in range(5):
        mask = np.zeros((48, 64), np.uint8)
        mask[8 : 8 + 6 * (i + 1), 10:40] = 255  # a red object of another size in each image
        pixels = rng.integers(0, 60, (48, 64, 3)).astype(np.uint8)
        pixels[mask > 0, 0] = 220
        (data / "images").mkdir(parents=True, exist_ok=True)
        (data / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(data / "images" / f"a{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"a{i}.png")
    (data / "classes.txt").write_text("background\nobject\n")
    cfg = compose_cfg(
        *TINY,
        "task=segmentation",
        "data=seg_folder",
        f"data.root={data}",
        "data.image_size=64",
        "head.fpn_channels=16",
        "head.seg_channels=16",
        "data.kfold=5",
        "data.fold=0",
        "loss.class_weights=auto",
        f"run_dir={tmp / 'train'}",
    )
    return tmp, data, cfg.seed, run(cfg)


def test_a_kfold_fold_of_binary_masks_trains_the_object_with_its_own_pixel_shares(binary_fold_run):
    tmp, data, seed, summary = binary_fold_run
    assert summary["binary_masks"] is True and summary["train_images"] == 4
    splits = fold_splits(seg_folder_splits(data, seed=seed), k=5, index=0, source="test")
    train_object = sum(int((read_mask(s.mask) == 255).sum()) for s in splits.train)
    share = round(train_object / (len(splits.train) * 48 * 64), 4)
    assert summary["class_pixel_share"] == {"background": round(1 - share, 4), "object": share}
    weights = tasks.load_module(summary["last_checkpoint"]).hparams.loss["class_weights"]
    assert weights[1] / weights[0] == pytest.approx((1 - share) / share, rel=1e-3)  # the fold's inverse
    assert "val/iou_object" in summary["metrics"]  # the object class is scored (it was never a class)


def test_predict_writes_one_mask_per_input_when_names_differ_by_extension_only(binary_fold_run, tmp_path):
    tmp, _, _, summary = binary_fold_run
    inputs = tmp_path / "in"
    sizes = {"x.jpg": (50, 30), "x.png": (60, 31), "sub/x.jpg": (70, 32), "y.jpg": (40, 33)}
    for name, (w, h) in sizes.items():
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(inputs / name)
    cfg = compose_cfg(
        *TINY,
        "mode=predict",
        f"ckpt_path={summary['last_checkpoint']}",
        f"predict.input={inputs}",
        "predict.draw=true",
        f"run_dir={tmp / 'predict'}",
    )
    out = run(cfg)
    with open(out["predictions"]) as f:
        rows = {Path(r["path"]).relative_to(inputs).as_posix(): r for r in csv.DictReader(f)}
    masks = Path(out["masks_dir"])
    assert {k: Path(r["mask"]).relative_to(masks).as_posix() for k, r in rows.items()} == {
        "x.jpg": "x.jpg.png",
        "x.png": "x.png.png",
        "sub/x.jpg": "sub/x.png",
        "y.jpg": "y.png",
    }
    assert len(list(masks.rglob("*.png"))) == len(list(Path(out["overlays_dir"]).rglob("*.png"))) == 4
    for name, row in rows.items():  # each file is its own input's (the sizes tell them apart)
        assert Image.open(row["mask"]).size == Image.open(row["overlay"]).size == sizes[name]
