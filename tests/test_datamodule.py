"""ClassificationDataModule, datasets and timm transforms: batch shapes, dtypes and option checks."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from b4transfer.data import (
    DatasetSplits,
    ImageDataset,
    PathDataset,
    Sample,
    build_transforms,
    draft_size_for,
    scan_folder,
)
from b4transfer.tasks.classification.data.csvdata import read_csv
from b4transfer.tasks.classification.data.datamodule import ClassificationDataModule

CFG = {
    "input_size": (3, 64, 64),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}
EVAL_CFG = {**CFG, "input_size": (3, 72, 72), "crop_pct": 1.0}


def _folder(root: Path, per_class: int = 6, test: bool = False) -> Path:
    rng = np.random.default_rng(0)
    splits = {"train": per_class, "val": 2} | ({"test": 3} if test else {})
    for split, n in splits.items():
        for c, name in enumerate(("ant", "bee", "cow")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (40 + 10 * c, 50, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def splits(tmp_path) -> DatasetSplits:
    return scan_folder(_folder(tmp_path / "ds"))


def _dm(splits: DatasetSplits, **kwargs) -> ClassificationDataModule:
    return ClassificationDataModule(splits, train_cfg=CFG, eval_cfg=EVAL_CFG, **{"batch_size": 4, **kwargs})


def test_batches_have_expected_shapes_and_dtypes(splits):
    dm = _dm(splits)
    assert (dm.class_names, dm.num_classes, dm.multi_label) == (["ant", "bee", "cow"], 3, False)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (4,) and y.dtype == torch.long
    assert x.mean().abs() < 1.5 and x.std() > 0.3  # normalised with mean/std, not 0..1
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 72, 72) and yv.tolist() == [0, 0, 1, 1]
    assert len(dm.train_dataloader()) == 5 and len(dm.val_dataloader()) == 2
    assert dm.class_counts("train") == [6, 6, 6] and dm.class_counts("val") == [2, 2, 2]


def test_train_is_shuffled_and_drop_last(splits):
    dm = _dm(splits, drop_last=True)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler) and loader.drop_last
    assert len(loader) == 4 and not dm.val_dataloader().drop_last


def test_test_loader_falls_back_to_val_with_a_log_line(splits, tmp_path, caplog):
    dm = _dm(splits)
    with caplog.at_level(logging.INFO, logger="b4transfer.tasks.classification.data.datamodule"):
        loader = dm.test_dataloader()
    assert len(loader.dataset) == 6 and "No test split: testing on the validation split" in caplog.text
    with_test = _dm(scan_folder(_folder(tmp_path / "t", test=True)))
    assert len(with_test.test_dataloader().dataset) == 9


def test_multi_label_targets_are_multi_hot(tmp_path):
    for i in range(6):
        Image.new("RGB", (30, 30), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    rows = ["0.png,a b", "1.png,b", "2.png,c a", "3.png,a", "4.png,b c", "5.png,c"]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    dm = _dm(read_csv(tmp_path / "m.csv", multi_label=True, val_fraction=0.34), batch_size=8)
    assert dm.multi_label
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 64, 64) and y.dtype == torch.float32 and y.shape[1] == 3
    assert set(y.sum(1).tolist()) <= {1.0, 2.0} and set(y.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"batch_size": 0}, r"data\.batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, r"data\.batch_size must be an integer >= 1, got 2\.5"),
        ({"num_workers": -1}, r"data\.num_workers must be an integer >= 0, got -1"),
        ({"batch_size": 64, "drop_last": True}, r"data\.batch_size=64 with data\.drop_last=true but only 18"),
        ({"augment": {"hflip": 0.5, "flip": 1}}, r"data\.augment has unknown key\(s\) \['flip'\].*'re_prob'"),
    ],
)
def test_option_errors(splits, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _dm(splits, **kwargs)


def test_empty_val_split_is_an_error_at_construction(splits):
    empty = DatasetSplits(splits.class_names, splits.train, [])
    with pytest.raises(ValueError, match=r"validation split is empty \(18 training images, 3 classes\).*Fix"):
        _dm(empty)


def test_build_transforms_and_draft_size():
    train_tf, eval_tf = build_transforms(train_cfg=CFG, eval_cfg=EVAL_CFG, augment={"scale": (0.5, 1.0)})
    img = Image.new("RGB", (100, 80), (10, 200, 30))
    assert train_tf(img).shape == (3, 64, 64) and eval_tf(img).shape == (3, 72, 72)
    assert "RandomResizedCrop" in repr(train_tf) and "CenterCrop" in repr(eval_tf)
    assert draft_size_for(CFG) == (96, 96) and draft_size_for({"input_size": 50}, 2) == (100, 100)
    assert draft_size_for(CFG, None) is None
    with pytest.raises(ValueError, match=r"data.draft_factor must be a number >= 1.*got 0.5"):
        draft_size_for(CFG, 0.5)
    with pytest.raises(ValueError, match=r"eval_cfg has no 'input_size' \(got keys \['mean'\]\)"):
        build_transforms(train_cfg=CFG, eval_cfg={"mean": (0, 0, 0)})


def test_datasets_without_transform_and_pickling(splits, tmp_path):
    ds = ImageDataset(splits.train, num_classes=3)
    x, y = ds[0]
    assert x.shape == (3, 40, 50) and x.min() >= 0 and x.max() <= 1 and y.item() == 0
    pickle.loads(pickle.dumps(_dm(splits).dataset("train")))  # worker processes can receive it
    paths = [s.path for s in splits.val]
    x, index = PathDataset(paths, transform=None)[3]
    assert index == 3 and x.shape[0] == 3
    with pytest.raises(ValueError, match=r"0\.png: target 5 has class index\(es\) \[5\] outside 0\.\.2"):
        ImageDataset([Sample(Path("0.png"), 5)], num_classes=3)
