"""Semantic-mask data: the seg_folder, VOC and COCO readers, the joint transforms, and every bad input
the issue lists, each refused at start-up in one line naming the file, the value and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from PIL import Image
from tests.conftest import TINY, compose_cfg

from b4transfer.errors import UserError
from b4transfer.modes import run
from b4transfer.tasks.segmentation.data.coco import coco_semantic_splits
from b4transfer.tasks.segmentation.data.datamodule import MaskDataModule
from b4transfer.tasks.segmentation.data.demo import DEMO_MASK_CLASSES, demo_mask_splits
from b4transfer.tasks.segmentation.data.folder import seg_folder_splits
from b4transfer.tasks.segmentation.data.masks import default_palette
from b4transfer.tasks.segmentation.data.transforms import MaskTransform
from b4transfer.tasks.segmentation.data.voc import VOC_CLASSES, voc_seg_splits

MEAN = (0.485, 0.456, 0.406)


def write_pair(
    root: Path, split: str | None, name: str, mask: np.ndarray, *, mode: str = "L", size=None
) -> None:
    """``images/<split>/<name>.jpg`` (the mask's size unless ``size``) and ``masks/<split>/<name>.png``."""
    sub = Path(split) if split else Path()
    h, w = mask.shape[:2]
    (root / "images" / sub).mkdir(parents=True, exist_ok=True)
    (root / "masks" / sub).mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (h, w, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    (image.resize(size) if size else image).save(root / "images" / sub / f"{name}.jpg")
    Image.fromarray(mask.astype(np.uint8), mode=mode).save(root / "masks" / sub / f"{name}.png")


def squares(h: int = 40, w: int = 48, value: int = 1) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[8:24, 10:30] = value
    return mask


def one_line_error(fn, *match: str) -> str:
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for text in match:
        assert text in message, message
    return message


# --------------------------------------------------------------------------------------------- readers
def test_seg_folder_reads_splits_names_and_pixel_counts(tmp_path):
    for i in range(3):
        write_pair(tmp_path, "train", f"t{i}", squares(value=1 + i % 2))
    write_pair(tmp_path, "val", "v0", squares(value=2))
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    splits = seg_folder_splits(tmp_path)
    assert splits.class_names == ["background", "cat", "dog"]
    assert (len(splits.train), len(splits.val)) == (3, 1)
    assert splits.class_pixels == [3 * (40 * 48 - 320), 2 * 320, 320]
    assert splits.train[0].size == (48, 40)


def test_seg_folder_single_pool_is_split_and_names_default_to_class_i(tmp_path):
    for i in range(5):
        write_pair(tmp_path, None, f"a{i}", squares(value=3))
    splits = seg_folder_splits(tmp_path, val_fraction=0.2, seed=0)
    assert splits.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert (len(splits.train), len(splits.val)) == (4, 1)


def test_palette_masks_and_rgb_masks_with_a_palette(tmp_path):
    palette = [(0, 0, 0), (200, 10, 10), (10, 200, 10)]
    mask = squares(value=2)
    write_pair(tmp_path, "train", "p", mask, mode="L")
    p = Image.fromarray(mask, mode="P")
    p.putpalette([v for c in default_palette(3) for v in c] + [0] * (768 - 9))
    p.save(tmp_path / "masks" / "train" / "p.png")  # a VOC-style palette PNG: indices read as they are
    write_pair(tmp_path, "val", "rgb", mask)
    rgb = np.array(palette, np.uint8)[mask]
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "masks" / "val" / "rgb.png")
    splits = seg_folder_splits(tmp_path, palette=[list(c) for c in palette])
    assert splits.class_pixels[2] == 320 and splits.palette == palette
    dm = MaskDataModule(splits, image_size=48, mean=MEAN, augment=False)
    _, target = dm.dataset("val")[0]
    assert set(target.unique().tolist()) <= {0, 2, 255} and (target == 2).sum() > 0


def test_voc_layout_reads_the_lists_and_keeps_the_border_ignored(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            mask = squares(value=15)
            mask[0, :] = 255  # the VOC border
            Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
            png = Image.fromarray(mask, mode="P")
            png.putpalette([v for c in default_palette(256) for v in c])  # VOC's own colour map
            png.save(root / "SegmentationClass" / f"{name}.png")
    splits = voc_seg_splits(tmp_path / "VOCdevkit")
    assert splits.class_names == list(VOC_CLASSES) and (len(splits.train), len(splits.val)) == (2, 1)
    assert splits.class_pixels[15] == 640


def _coco(tmp_path: Path, annotations: list[dict], size=(40, 30)) -> Path:
    (tmp_path / "train").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / "train" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "bbox": [0, 0, 1, 1], **a} for i, a in enumerate(annotations)
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_instances_become_semantic_masks_later_wins_crowd_ignored(tmp_path):
    from pycocotools import mask as mask_utils

    crowd = np.zeros((30, 40), np.uint8, order="F")
    crowd[20:30, 0:10] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode()
    path = _coco(
        tmp_path,
        [
            {"category_id": 5, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]], "iscrowd": 0},
            {
                "category_id": 9,
                "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]],
                "iscrowd": 0,
            },  # over the cat
            {"category_id": 5, "segmentation": rle, "iscrowd": 1},
        ],
    )
    splits = coco_semantic_splits(train_json=path, train_images=tmp_path / "train", val_fraction=0.5)
    assert splits.class_names == ["background", "cat", "dog"]
    sample = (splits.train + splits.val)[0]
    mask = sample.mask.render(30, 40)
    assert mask[5, 5] == 1 and mask[15, 15] == 2  # the later dog paints over the earlier cat
    assert mask[25, 5] == 255 and mask[5, 35] == 0  # the crowd region is ignored
    pixels = splits.class_pixels  # from the annotations' areas (computed: the JSON gives none), not rendered
    assert abs(pixels[1] - 400) < 30 and abs(pixels[2] - 200) < 30 and sum(pixels) <= 40 * 30


def test_coco_with_task_segmentation_composes_the_semantic_reader(tmp_path):
    cfg = compose_cfg("task=segmentation", "data=coco", f"data.root={tmp_path}")
    assert cfg.data.source._target_.endswith("coco_semantic_splits") and cfg.data.ignore_index == 255
    assert compose_cfg("task=detection", "data=coco").data.source._target_.endswith("coco.coco_splits")


@pytest.mark.parametrize("data", ["seg_folder", "voc_seg", "coco"])
def test_segmentation_trains_with_flips_only_by_default(data, tmp_path):
    """The measured default (docs/studies/segmentation-vs-smp.md): no scale or colour jitter on
    real data, whichever reader; the from-scratch demo keeps the jitter it was measured with."""
    augment = compose_cfg("task=segmentation", f"data={data}", f"data.root={tmp_path}").data.augment
    assert (augment.hflip, list(augment.scale), augment.color_jitter) == (0.5, [1.0, 1.0], 0.0)
    demo = compose_cfg("task=segmentation").data.augment
    assert list(demo.scale) == [0.75, 1.25] and demo.color_jitter == 0.2


def test_demo_set_is_deterministic_and_read_through_seg_folder(tmp_path):
    a = demo_mask_splits(tmp_path / "a", image_size=48, train_images=3, val_images=2, seed=1)
    b = demo_mask_splits(tmp_path / "b", image_size=48, train_images=3, val_images=2, seed=1)
    assert a.class_names == list(DEMO_MASK_CLASSES) and (len(a.train), len(a.val)) == (3, 2)
    for x, y in zip(a.train, b.train):
        assert x.path.read_bytes() == y.path.read_bytes() and x.mask.read_bytes() == y.mask.read_bytes()
    assert a.class_pixels == b.class_pixels and sum(a.class_pixels) == sum(
        s.size[0] * s.size[1] for s in a.train
    )


# ---------------------------------------------------------------------------------------- transforms
def test_joint_transforms_keep_masks_aligned_nearest_and_pad_with_ignore(tmp_path):
    mask = np.zeros((40, 80), np.int64)
    mask[:, 40:] = 3  # right half class 3, and the image red there
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 40:, 0] = 255
    image = Image.fromarray(pixels)
    train = MaskTransform(
        64,
        fill=(0, 0, 0),
        ignore_index=255,
        train=True,
        augment={"hflip": 0.5, "scale": [0.5, 1.5], "color_jitter": 0.0},
    )
    torch.manual_seed(0)
    for _ in range(6):
        x, y = train(image, mask)
        assert x.shape == (3, 64, 64) and y.shape == (64, 64) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 3, 255}  # nearest: no blended class values
        red = x[0] > 0.9
        assert (y[red] == 3).float().mean() > 0.95  # image and mask moved together
    x, y = MaskTransform(64, fill=(0, 0, 0), ignore_index=255, train=False)(image, mask)
    assert (y[32:] == 255).all() and (y[:32] != 255).all()  # letterbox: the padding is ignored


# ----------------------------------------------------------------------------------- bad input (issue)
def test_a_mask_of_another_size_than_its_image_is_refused(tmp_path):
    write_pair(tmp_path, None, "a", squares(), size=(50, 40))
    write_pair(tmp_path, None, "b", squares())
    one_line_error(
        lambda: seg_folder_splits(tmp_path),
        "a.png is 48x40 but its image",
        "a.jpg is 50x40",
        "Fix: save the mask at the image's size",
    )


def test_mask_values_that_are_no_class_nor_ignore_are_named_with_the_file(tmp_path):
    write_pair(tmp_path, None, "a", squares(value=7))
    write_pair(tmp_path, None, "b", squares(value=1))
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    one_line_error(
        lambda: seg_folder_splits(tmp_path),
        "a.png: [7]",
        "neither a class (0..1) nor the ignore index 255",
        "Fix:",
    )


def test_an_rgb_mask_without_a_palette_is_refused(tmp_path):
    write_pair(tmp_path, None, "a", np.dstack([squares(value=200)] * 3), mode="RGB")
    write_pair(tmp_path, None, "b", squares())
    one_line_error(lambda: seg_folder_splits(tmp_path), "a.png is an RGB image", "Fix: set data.palette")
    one_line_error(
        lambda: seg_folder_splits(tmp_path, palette=[[0, 0, 0], [9, 9, 9]]),
        "a.png: ['colour not in data.palette']",
    )


def test_an_image_without_a_mask_and_a_mask_without_an_image_are_refused(tmp_path):
    write_pair(tmp_path, "train", "a", squares())
    write_pair(tmp_path, "train", "b", squares())
    (tmp_path / "masks" / "train" / "b.png").rename(tmp_path / "masks" / "train" / "c.png")
    one_line_error(lambda: seg_folder_splits(tmp_path), "1 image(s) have no mask", "b.jpg", "Fix: add a mask")
    (tmp_path / "images" / "train" / "b.jpg").rename(tmp_path / "images" / "train" / "c.jpg")
    (tmp_path / "masks" / "train" / "d.png").write_bytes(
        (tmp_path / "masks" / "train" / "a.png").read_bytes()
    )
    one_line_error(
        lambda: seg_folder_splits(tmp_path), "1 mask(s) have no image", "d.png", "Fix: add the images"
    )


def test_voc_lists_naming_missing_files_are_refused(tmp_path):
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("gone\n")
    one_line_error(
        lambda: voc_seg_splits(tmp_path),
        "train.txt names 2 file(s) that do not exist",
        "line 1:",
        "JPEGImages/gone.jpg",
        "Fix:",
    )


def test_fewer_than_two_classes_is_refused(tmp_path):
    write_pair(tmp_path, None, "a", np.zeros((20, 20), np.uint8))
    write_pair(tmp_path, None, "b", np.zeros((20, 20), np.uint8))
    one_line_error(lambda: seg_folder_splits(tmp_path), "1 class(es) ['class_0']", "need at least 2", "Fix:")
    (tmp_path / "classes.txt").write_text("background\n")
    one_line_error(lambda: seg_folder_splits(tmp_path), "['background']", "need at least 2")


def test_coco_annotations_without_usable_polygons_are_refused(tmp_path):
    path = _coco(tmp_path, [{"category_id": 5, "segmentation": [[1, 2, 3]], "iscrowd": 0}])
    one_line_error(
        lambda: coco_semantic_splits(train_json=path, train_images=tmp_path / "train"),
        "annotation id 1 has segmentation [[1, 2, 3]]",
        "Fix:",
    )


def test_bad_data_stops_the_run_before_training(tmp_path):
    write_pair(tmp_path / "d", None, "a", squares(value=9))
    write_pair(tmp_path / "d", None, "b", squares())
    (tmp_path / "d" / "classes.txt").write_text("background\nthing\n")
    cfg = compose_cfg(
        *TINY,
        "task=segmentation",
        "data=seg_folder",
        f"data.root={tmp_path / 'd'}",
        f"run_dir={tmp_path / 'run'}",
    )
    with pytest.raises(InstantiationException) as info:  # the CLI prints its cause as one line
        run(cfg)
    assert isinstance(info.value.__cause__, UserError) and "a.png: [9]" in str(info.value.__cause__)
    assert not (tmp_path / "run" / "checkpoints").exists()
