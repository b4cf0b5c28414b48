"""The anchor-fit check: training box sizes vs the detector's anchors, with a suggestion when they differ."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from b4transfer.data.boxes import DetectionSample
from b4transfer.tasks.detection.anchors import anchor_fit, box_sides, warn_if_unfit
from b4transfer.tasks.detection.head import default_anchor_sizes

RETINA = default_anchor_sizes([8, 16, 32, 64, 128], "retinanet")  # 32 ... 812 px


def _sample(boxes, size=(512, 256), crowd=None) -> DetectionSample:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return DetectionSample(
        path=Path("x.png"), boxes=boxes, labels=np.zeros(n, np.int64),
        iscrowd=np.asarray(crowd if crowd is not None else [0] * n, np.int64), image_id=1, size=size,
    )


def test_box_sides_are_measured_on_the_letterbox_canvas_without_crowd_regions():
    # 512 x 256 image letterboxed to 256: scale 0.5; a 40 x 10 box -> sqrt(20 * 5) = 10 px
    sides = box_sides([_sample([[0, 0, 40, 10], [0, 0, 100, 100]], crowd=[0, 1])], 256)
    assert sides.tolist() == pytest.approx([10.0])


def test_small_boxes_get_smaller_anchors_that_cover_them():
    sides = np.full(100, 12.0)  # far below 32 * sqrt(0.5) = 22.6
    report = anchor_fit(sides, RETINA, "retinanet")
    assert report["share_outside"] == 1.0
    suggested = report["suggested_anchor_sizes"]
    assert len(suggested) == len(RETINA) and all(len(a) == len(b) for a, b in zip(suggested, RETINA))
    assert min(min(level) for level in suggested) * math.sqrt(0.5) <= 12.0 + 0.5
    # one factor for every anchor: the pyramid keeps its shape
    ratios = [s / r for ls, lr in zip(suggested, RETINA) for s, r in zip(ls, lr)]
    assert max(ratios) - min(ratios) < 0.05


def test_large_boxes_get_larger_anchors_and_rpn_uses_its_own_iou():
    sides = np.full(50, 2000.0)
    report = anchor_fit(sides, [[32], [64], [128], [256]], "faster_rcnn")
    high = report["covered_sides"][1]
    assert high == pytest.approx(256 / math.sqrt(0.7), abs=0.1)
    assert max(max(level) for level in report["suggested_anchor_sizes"]) / math.sqrt(0.7) >= 2000 - 2


def test_boxes_the_anchors_cover_give_no_suggestion_and_fcos_is_not_checked():
    sides = np.linspace(30, 500, 200)
    report = anchor_fit(sides, RETINA, "retinanet")
    assert report["share_outside"] <= 0.1 and "suggested_anchor_sizes" not in report
    assert anchor_fit(sides, [[8], [16], [32], [64], [128]], "fcos") is None
    assert anchor_fit(np.array([]), RETINA, "retinanet") is None


def test_the_warning_names_the_fix(caplog):
    report = anchor_fit(np.full(10, 10.0), RETINA, "retinanet")
    with caplog.at_level(logging.WARNING):
        warn_if_unfit(report)
    assert "head.anchor_sizes='[[" in caplog.text and "100%" in caplog.text
    caplog.clear()
    warn_if_unfit(anchor_fit(np.full(10, 100.0), RETINA, "retinanet"))
    assert caplog.text == ""


def test_auto_anchor_sizes_fit_small_boxes_and_keep_the_defaults_for_covered_ones():
    from omegaconf import OmegaConf

    from b4transfer.tasks.detection import DetectionTask
    from b4transfer.tasks.detection.data.splits import DetectionSplits

    def module_for(boxes, anchor_sizes="auto"):
        splits = DetectionSplits(["a"], [1], train=[_sample(boxes, size=(256, 256))] * 4, val=[])
        cfg = OmegaConf.create({
            "model": {"name": "test_efficientnet", "pretrained": False},
            "head": {"detector": "retinanet", "fpn_channels": 32, "anchor_sizes": anchor_sizes},
            "optim": {"lr": 1e-3}, "data": {"image_size": 128},
        })
        return DetectionTask().build_module(cfg, splits)

    small = module_for([[0, 0, 10, 10], [20, 20, 32, 32]])  # 5-6 px sides on the 128 px canvas
    sizes = small.head.anchor_sizes
    assert min(min(level) for level in sizes) <= 5 / math.sqrt(0.5)  # the smallest box is covered
    assert small.hparams["head"]["anchor_sizes"] == sizes  # the checkpoint records the fitted sizes
    default = default_anchor_sizes([8, 16, 32, 64, 128], "retinanet")
    assert module_for([[0, 0, 100, 100]]).head.anchor_sizes == [list(map(float, lv)) for lv in default]
    # auto trains exactly what writing the fitted sizes would: same initial weights at the same seed
    torch.manual_seed(0)
    auto = module_for([[0, 0, 10, 10], [20, 20, 32, 32]]).state_dict()
    torch.manual_seed(0)
    written = module_for([[0, 0, 10, 10], [20, 20, 32, 32]], anchor_sizes=sizes).state_dict()
    assert auto.keys() == written.keys() and all(torch.equal(auto[k], written[k]) for k in auto)
