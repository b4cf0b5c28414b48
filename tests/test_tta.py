"""Test-time augmentation (``tta=``): the views, classification's averaged probabilities, detection's
boxes mapped back to the original image and merged, and the summaries with and without TTA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer.data.loaders import fill_colour
from b4transfer.errors import NotSupportedError
from b4transfer.modes import run
from b4transfer.runtime import tta
from b4transfer.tasks.classification.module import ClassificationModule
from b4transfer.tasks.detection.data.datamodule import DetectionPathDataset, collate_detection
from b4transfer.tasks.detection.module import DetectionModule
from b4transfer.tasks.detection.tta import merge_boxes

MODEL = {"name": "test_efficientnet", "pretrained": False}
DET = (
    "task=detection",
    "data.source.image_size=64",
    "data.source.train_images=8",
    "data.source.val_images=4",
    "data.image_size=64",
    "head.fpn_channels=32",
)


def test_views_and_the_dense_map_back():
    assert [str(v) for v in tta.views("hflip")] == ["identity", "hflip"]
    assert len(tta.views("hflip_scales")) == 6 and tta.views(None) is None
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    for view in tta.views("hflip"):  # a per-pixel output mapped back lands where it came from
        assert torch.equal(tta.undo_dense(view, tta.apply(view, x), x.shape[-2:]), x)
    smooth = torch.linspace(0, 1, 12).expand(2, 3, 8, 12).contiguous()
    averaged = tta.average_dense(lambda v: v, smooth, tta.views("hflip_scales"))
    assert averaged.shape == smooth.shape and torch.allclose(averaged, smooth, atol=0.03)


def test_classification_tta_averages_the_probabilities_of_the_views():
    module = ClassificationModule(class_names=["a", "b", "c"], model=MODEL).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = module.predict_step((x, torch.arange(2)), 0)["probs"]
        module.tta = tta.views("hflip")
        out = module.predict_step((x, torch.arange(2)), 0)["probs"]
        flipped = module.head.probabilities(module(x.flip(-1)))
    assert torch.allclose(out, (plain + flipped) / 2, atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(module.tta_forward(x).softmax(-1), out, atol=1e-5)  # the loss reads these
    module.set_calibration({"temperature": 2.0})  # prediction: calibrated; loss and metrics: raw, as without
    with torch.no_grad():
        calibrated = module.predict_step((x, torch.arange(2)), 0)["probs"]
        expected = ((module(x) / 2).softmax(-1) + (module(x.flip(-1)) / 2).softmax(-1)) / 2
    assert torch.allclose(calibrated, expected, atol=1e-6)
    assert torch.allclose(module.tta_forward(x).softmax(-1), out, atol=1e-5)


def test_merging_views_votes_boxes_and_scores():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    out = merge_boxes(boxes, torch.tensor([0.9, 0.3, 0.8]), torch.tensor([1, 1, 1]), iou=0.5, views=2,
                      max_det=10)
    assert len(out["boxes"]) == 2
    assert torch.allclose(out["boxes"][0], torch.tensor([0.25, 0.25, 10.25, 10.25]))  # score-weighted mean
    assert torch.allclose(out["scores"], torch.tensor([0.6, 0.4]))  # found in 2 of 2 views; in 1 of 2


def _known_box_image(path: Path) -> list[float]:
    """A 100 x 60 grey image with one white rectangle; returns its box (x1, y1, x2, y2)."""
    arr = np.full((60, 100, 3), 128, np.uint8)
    arr[10:30, 20:50] = 255
    Image.fromarray(arr).save(path)
    return [20.0, 10.0, 50.0, 30.0]


def _find_white(images, targets=None):
    """A stand-in detector: the box around the white pixels of each input (any size, any position)."""
    out = []
    for img in images:
        ys, xs = torch.nonzero(img.mean(0) > 0.75, as_tuple=True)
        box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
        out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])})
    return out


@pytest.mark.parametrize("name", ["hflip", "hflip_scales"])
def test_detection_tta_boxes_come_back_in_original_image_pixels(tmp_path, monkeypatch, name):
    """Each view's box (mirrored, resized, on the letterbox canvas) maps back onto the known box."""
    known = _known_box_image(tmp_path / "box.png")
    module = DetectionModule(class_names=["box"], model=MODEL, head={"fpn_channels": 32},
                             data={"image_size": 64}).eval()
    seen = []
    monkeypatch.setattr(module.head, "forward", lambda images: seen.append(images[0].shape) or
                        _find_white(images))
    fill = fill_colour(module.data_config["eval"]["mean"])
    dataset = DetectionPathDataset([tmp_path / "box.png"], 64, fill)
    batch = collate_detection([dataset[0]])
    module.tta = tta.views(name)
    det = module.predict_step(batch)[0]
    assert len(seen) == len(module.tta)  # every view ran, at its own size
    assert {s[-1] for s in seen} == {tta.view_side(64, v) for v in module.tta}
    assert det["boxes"].shape == (1, 4)
    assert torch.allclose(det["boxes"][0], torch.tensor(known), atol=2.5), det["boxes"]
    assert float(det["scores"][0]) == pytest.approx(0.9)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tta")
    make_image_folder(root / "images", per_class=6, size=32)
    cls = (*TINY, "data=folder", f"data.root={root / 'images'}", "data.image_size=32")
    det = (*TINY, *DET, f"data.source.root={root / 'demo'}")
    out = {"root": root, "cls": cls, "det": det}
    out["cls_ckpt"] = run(compose_cfg(*cls, f"run_dir={root / 'cls'}"))["last_checkpoint"]
    out["det_ckpt"] = run(compose_cfg(*det, f"run_dir={root / 'det'}"))["last_checkpoint"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind,monitor", [("cls", "val/acc1"), ("det", "val/map")])
def test_validate_reports_the_metrics_with_and_without_tta(runs, kind, monitor):
    root = runs["root"]
    plain = run(compose_cfg(*runs[kind], "mode=validate", f"ckpt_path={runs[kind + '_ckpt']}",
                            f"run_dir={root / kind / 'plain'}"))
    cfg = compose_cfg(*runs[kind], "mode=validate", f"ckpt_path={runs[kind + '_ckpt']}", "tta=hflip",
                      f"run_dir={root / kind / 'tta'}")
    summary = run(cfg)
    written = json.loads((root / kind / "tta" / "summary.json").read_text())
    report = written["tta"]
    assert report["name"] == "hflip" and report["views"] == ["identity", "hflip"]
    assert report["monitor"] == monitor
    assert report["without_tta"] == pytest.approx(plain["metrics"][monitor])
    assert report["metrics_without_tta"][monitor] == pytest.approx(plain["metrics"][monitor])
    assert report["with_tta"] == summary["metrics"][monitor]


@pytest.mark.slow
@pytest.mark.parametrize("kind,output", [("cls", "predictions.csv"), ("det", "detections.json")])
def test_predict_with_tta(runs, kind, output):
    root = runs["root"]
    images = root / "images" / "red" if kind == "cls" else root / "demo" / "val"
    cfg = compose_cfg(*runs[kind], "mode=predict", f"ckpt_path={runs[kind + '_ckpt']}", "tta=hflip_scales",
                      f"predict.input={images}", f"run_dir={root / kind / 'predict'}")
    summary = run(cfg)
    assert summary["tta"]["name"] == "hflip_scales" and len(summary["tta"]["views"]) == 6
    assert (root / kind / "predict" / output).is_file()
    agreement = summary["inference"].get("agreement_vs_fp32") or {}
    assert agreement.get("top1_agreement", 1.0) >= 0.99  # the fp32 check runs the same views


@pytest.mark.parametrize(
    "extra,match",
    [
        (("tta=hflip",), r"tta=hflip applies to mode=validate\|test\|predict, not mode=train"),
        (("tta=vflip",), r"task=classification does not support tta=vflip; it supports hflip, hflip_scales"),
    ],
)
def test_unsupported_tta_is_refused_in_one_line(tmp_path, extra, match):
    make_image_folder(tmp_path / "images", per_class=2, size=32)
    cfg = compose_cfg(*TINY, "data=folder", f"data.root={tmp_path / 'images'}", f"run_dir={tmp_path / 'r'}",
                      *extra)
    with pytest.raises(NotSupportedError, match=match) as info:
        run(cfg)
    assert "\n" not in str(info.value) and not (tmp_path / "r").exists()
