"""Input pipeline: per-split JPEG draft sizes reach the datasets, big JPEGs decode smaller, and
``data.augment=false`` gives deterministic training images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from b4transfer.data import DatasetSplits, Sample, build_transforms
from b4transfer.data.images import load_rgb
from b4transfer.tasks.classification.data.datamodule import ClassificationDataModule

CFG = {"input_size": (3, 64, 64), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
       "crop_pct": 0.875, "crop_mode": "center"}
EVAL_CFG = {**CFG, "input_size": (3, 80, 80), "crop_pct": 1.0}


@pytest.fixture
def photo_splits(tmp_path) -> DatasetSplits:
    """Two 800x600 noisy JPEGs (a 'photo' much larger than the 64 px model input)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(2):
        arr = np.clip(rng.normal(128, 40, (600, 800, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.jpg", quality=90)
        samples.append(Sample(tmp_path / f"{i}.jpg", i))
    return DatasetSplits(["a", "b"], samples, samples)


def _dm(splits, **kwargs) -> ClassificationDataModule:
    return ClassificationDataModule(splits, train_cfg=CFG, eval_cfg=EVAL_CFG, batch_size=2, **kwargs)


def test_each_split_decodes_jpegs_for_its_own_input_size(photo_splits):
    dm = _dm(photo_splits)
    train, val = dm.dataset("train"), dm.dataset("val")
    assert train.draft_size == (96, 96) and val.draft_size == (120, 120)  # 1.5 x 64, 1.5 x 80
    small = load_rgb(photo_splits.train[0].path, draft_size=train.draft_size)
    assert small.size == (200, 150), "1/4 DCT scale: the smallest keeping >= 96 px"
    assert load_rgb(photo_splits.train[0].path, draft_size=val.draft_size).size == (200, 150)
    assert train[0][0].shape == (3, 64, 64) and val[0][0].shape == (3, 80, 80)
    full = _dm(photo_splits, draft_factor=None)
    assert full.dataset("train").draft_size is None and full.dataset("val").draft_size is None
    # drafting changes pixels only as a resize would: the eval images stay close
    assert (val[0][0] - full.dataset("val")[0][0]).abs().mean() < 0.15


def test_augment_false_gives_deterministic_training_images(photo_splits):
    dm = _dm(photo_splits, augment=False)
    ds = dm.dataset("train")
    torch.manual_seed(0)
    first = ds[0][0]
    torch.manual_seed(1)
    assert torch.equal(first, ds[0][0])
    assert "RandomResizedCrop" not in repr(dm.train_transform) and "CenterCrop" in repr(dm.train_transform)
    assert "RandomResizedCrop" in repr(_dm(photo_splits).train_transform)


def test_bad_augment_value_is_rejected():
    with pytest.raises(ValueError, match=r"augment must be a mapping .* false \(no augmentation\), got 5"):
        build_transforms(train_cfg=CFG, eval_cfg=EVAL_CFG, augment=5)
