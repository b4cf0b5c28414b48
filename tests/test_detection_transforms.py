"""Box-aware transforms and the detection data module: letterbox, flips, crops, negatives, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tests.detection_helpers import small_coco, write_image

from b4transfer.data.boxes import make_sample
from b4transfer.data.images import ImageLoadError
from b4transfer.tasks.detection.data.coco import coco_splits
from b4transfer.tasks.detection.data.datamodule import (
    DetectionDataModule,
    DetectionDataset,
    DetectionPathDataset,
)
from b4transfer.tasks.detection.data.splits import DetectionSplits
from b4transfer.tasks.detection.data.transforms import DetectionTransform

FILL = (124, 116, 104)


def _sample(path, boxes, labels, size, crowd=None):
    return make_sample(path, boxes, labels, crowd, image_id=1, size=size)


def test_eval_letterbox_keeps_the_top_left_origin_and_maps_back_exactly(tmp_path):
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    sample = _sample(tmp_path / "x.png", [[10, 20, 110, 70], [150, 0, 200, 100]], [0, 1], (200, 100))
    x, target = DetectionTransform(64, fill=FILL, train=False)(image, sample)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x[:, :32, :], torch.tensor([1.0, 0, 0])[:, None, None])  # the image, resized
    assert torch.allclose(x[:, 32:, :], torch.tensor(FILL)[:, None, None] / 255)  # padding below
    torch.testing.assert_close(target["boxes"], torch.tensor([[3.2, 6.4, 35.2, 22.4], [48, 0, 64, 32]]))
    torch.testing.assert_close(target["boxes"] / target["scale"], torch.from_numpy(sample.boxes))
    assert target["orig_size"].tolist() == [100, 200] and target["image_id"] == 1


def test_train_flip_mirrors_boxes():
    image = Image.new("RGB", (64, 64))
    sample = _sample("x.png", [[4, 10, 20, 30]], [2], (64, 64))
    flip = DetectionTransform(
        64, fill=FILL, train=True, augment={"hflip": 1.0, "scale": [1, 1], "color_jitter": 0}
    )
    _, target = flip(image, sample)
    torch.testing.assert_close(target["boxes"], torch.tensor([[44.0, 10, 60, 30]]))
    assert target["labels"].tolist() == [2]


def test_train_crops_drop_boxes_they_cut_away_keeping_labels_and_crowd_flags_aligned():
    image = Image.new("RGB", (64, 64))
    boxes = [[0, 0, 8, 8], [28, 28, 36, 36], [56, 56, 64, 64], [0, 56, 8, 64]]
    sample = _sample("x.png", boxes, [0, 1, 2, 3], (64, 64), crowd=[0, 1, 0, 1])
    zoom = DetectionTransform(
        64, fill=FILL, train=True, augment={"hflip": 0.0, "scale": [3, 3], "color_jitter": 0.3}
    )
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        x, target = zoom(image, sample)
        assert x.shape == (3, 64, 64)
        b = target["boxes"]
        assert (b[:, 2:] - b[:, :2] >= 1).all() and (b >= 0).all() and (b <= 64).all()
        assert len(b) == len(target["labels"]) == len(target["iscrowd"]) < 4
        assert target["iscrowd"].tolist() == [label % 2 for label in target["labels"].tolist()]
        seen.update(target["labels"].tolist())
    assert len(seen) >= 2


def test_negatives_survive_the_train_transform():
    image = Image.new("RGB", (80, 50))
    x, target = DetectionTransform(64, fill=FILL, train=True)(image, _sample("x.png", [], [], (80, 50)))
    assert x.shape == (3, 64, 64) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_draft_decoded_jpegs_keep_their_boxes_in_place(tmp_path):
    path = tmp_path / "big.jpg"
    arr = np.zeros((384, 512, 3), np.uint8)
    arr[96:192, 128:384] = 255  # a white box
    Image.fromarray(arr).save(path, quality=95)
    sample = _sample(path, [[128, 96, 384, 192]], [0], (512, 384))
    dataset = DetectionDataset([sample], DetectionTransform(64, fill=FILL, train=False))
    x, target = dataset[0]  # decoded at a reduced JPEG draft scale (>= 128 px), then letterboxed
    torch.testing.assert_close(target["boxes"], torch.tensor([[16.0, 12, 48, 24]]))
    torch.testing.assert_close(target["boxes"] / target["scale"], torch.tensor([[128.0, 96, 384, 192]]))
    assert x[:, 14:22, 20:44].mean() > 0.9 and x[:, 30:46, :].mean() < 0.6


def test_prediction_scale_refers_to_the_original_image_even_when_draft_decoded(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.zeros((384, 512, 3), np.uint8)).save(path)
    x, meta = DetectionPathDataset([path], 64, FILL)[0]
    assert x.shape == (3, 64, 64) and meta["orig_size"].tolist() == [384, 512] and meta["index"] == 0
    torch.testing.assert_close(meta["scale"], torch.full((4,), 64 / 512))


def test_unknown_augment_key_is_named():
    with pytest.raises(ValueError, match=r"data.augment has unknown key\(s\) \['mosaic'\] for detection"):
        DetectionTransform(64, fill=FILL, train=True, augment={"mosaic": 1.0})
    with pytest.raises(ValueError, match=r"data.augment.scale must be \[low, high\]"):
        DetectionTransform(64, fill=FILL, train=True, augment={"scale": [1.5, 1.0]})


@pytest.mark.parametrize(
    "check, kind, example",
    [("detection", "detection", r"\[0.75,1.25\]"), ("segmentation", "semantic masks", r"\[0.5,2.0\]")],
)
def test_both_dense_tasks_check_augment_alike_naming_their_data(check, kind, example):
    from b4transfer.tasks.detection.data.transforms import check_augment
    from b4transfer.tasks.segmentation.data.transforms import check_mask_augment

    checker = {"detection": check_augment, "segmentation": check_mask_augment}[check]
    with pytest.raises(ValueError, match=rf"unknown key\(s\) \['mosaic'\] for {kind}\. Fix: use "):
        checker({"mosaic": 1.0})
    with pytest.raises(ValueError, match=r"hflip must be a probability in \[0, 1\], got 2"):
        checker({"hflip": 2})
    with pytest.raises(ValueError, match=rf"got \[2, 1\]\. Fix: e\.g\. data\.augment\.scale={example}"):
        checker({"scale": [2, 1]})
    with pytest.raises(ValueError, match=r"color_jitter must be >= 0, got -1"):
        checker({"color_jitter": -1})
    assert checker({"scale": [1, 2]})["scale"] == (1.0, 2.0)


def test_datamodule_batches_are_lists_of_images_and_targets(tmp_path):
    small_coco(tmp_path)
    splits = coco_splits(tmp_path, val_fraction=0.34)
    dm = DetectionDataModule(splits, image_size=48, mean=(0.5, 0.5, 0.5), batch_size=2)
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and len(images) == len(targets) == 2
    assert all(i.shape == (3, 48, 48) for i in images)
    assert set(targets[0]) == {"boxes", "labels", "iscrowd", "image_id", "orig_size", "scale"}
    images, targets = next(iter(dm.val_dataloader()))
    assert len(images) == 1 and not torch.isnan(targets[0]["scale"]).any()


def test_datamodule_without_validation_images_says_so(tmp_path):
    sample = _sample(write_image(tmp_path / "a.png"), [], [], (64, 48))
    splits = DetectionSplits(["a"], [1], [sample], [])
    with pytest.raises(ValueError, match=r"The validation split is empty \(1 training images\)"):
        DetectionDataModule(splits, image_size=48, mean=(0.5, 0.5, 0.5))


def test_unreadable_images_are_skipped_and_counted_or_refused(tmp_path):
    small_coco(tmp_path)
    (tmp_path / "train" / "1.png").write_bytes(b"not a png")
    splits = coco_splits(tmp_path, val_fraction=0.5)
    assert [p.name for p, _ in splits.skipped] == ["1.png"] and len(splits.train + splits.val) == 2
    with pytest.raises(ImageLoadError, match=r"1.png.*data.on_bad_image=skip"):
        coco_splits(tmp_path, on_bad_image="error")
