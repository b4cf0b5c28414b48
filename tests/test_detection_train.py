"""Detection end to end through ``train``/``run``: metrics, checkpoints, export, predict, COCO evaluation."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tests.conftest import TINY, compose_cfg
from tests.detection_helpers import small_coco

from b4transfer.modes import run, train
from b4transfer.tasks import load_module
from b4transfer.tasks.base import build_backbone
from b4transfer.tasks.detection import DetectionModule
from b4transfer.tasks.detection.data.coco import coco_splits
from b4transfer.tasks.detection.data.datamodule import DetectionDataModule
from b4transfer.tasks.detection.export import load_exported_detector
from b4transfer.tasks.detection.head import DetectionHead
from b4transfer.tasks.detection.module import DEFAULT_STRIDES
from b4transfer.tasks.detection.predict import coco_results, image_ids

DEMO = ("data.source.image_size=64", "data.source.train_images=16", "data.source.val_images=8")


@pytest.fixture
def det_cfg(tmp_path):
    """Tiny detection runs on a small generated demo set (written into tmp_path)."""

    def make(*overrides: str):
        return compose_cfg(
            *TINY,
            "task=detection",
            *DEMO,
            f"data.source.root={tmp_path / 'demo'}",
            "head.fpn_channels=32",
            f"run_dir={tmp_path / 'run'}",
            *overrides,
        )

    return make


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_detection_run_logs_val_loss_and_map_keeps_the_best_by_map_and_exports(det_cfg, tmp_path):
    cfg = det_cfg("trainer.max_epochs=2")
    assert cfg.checkpoint.monitor == "val/map"
    summary = train(cfg)
    run_dir = tmp_path / "run"
    rows = [r for r in _rows(run_dir / "metrics.csv") if r.get("val/map")]
    assert len(rows) == 2
    for key in (
        "val/loss",
        "val/classification",
        "val/bbox_regression",
        "val/map",
        "val/map_50",
        "val/map_75",
        "val/ap_circle",
        "train/loss",
    ):
        assert any(r.get(key) for r in _rows(run_dir / "metrics.csv")), key
    assert all(float(r["val/loss"]) > 0 for r in rows)
    best = max(float(r["val/map"]) for r in rows)
    assert summary["best_score"] == pytest.approx(best)
    assert summary["class_names"] == ["circle", "square", "triangle"] and summary["category_ids"] == [1, 2, 3]
    assert summary["anchor_fit"]["anchor_range"] == [32, 812]  # the start-up anchor check, recorded
    config = json.loads((run_dir / "export" / "config.json").read_text())
    assert config["task"] == "detection" and config["class_names"] == ["circle", "square", "triangle"]


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["retinanet", "faster_rcnn"])
def test_export_loads_back_into_the_torchvision_detector_with_identical_outputs(det_cfg, tmp_path, detector):
    summary = train(
        det_cfg(f"head.detector={detector}", "head.score_thresh=0.0", "trainer.limit_train_batches=1")
    )
    module = load_module(summary["best_checkpoint"])
    detector_model, config = load_exported_detector(tmp_path / "run" / "export")
    assert type(detector_model).__name__ == {"retinanet": "RetinaNet", "faster_rcnn": "FasterRCNN"}[detector]
    images = [torch.rand(3, 64, 64), torch.rand(3, 50, 70)]
    with torch.no_grad():
        ours, theirs = module(images), detector_model(images)
    for a, b in zip(ours, theirs):
        assert len(a["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)
        assert torch.equal(a["labels"] + config["label_offset"], b["labels"])


@pytest.mark.slow
def test_predict_writes_coco_results_that_pycocotools_loads_and_drawn_pngs(det_cfg, tmp_path):
    summary = train(
        det_cfg("head.score_thresh=0.0", "head.detections_per_img=5", "trainer.limit_train_batches=1")
    )
    demo = tmp_path / "demo"
    result = run(
        det_cfg(
            "mode=predict",
            f"ckpt_path={summary['last_checkpoint']}",
            f"predict.input={demo / 'val'}",
            f"predict.coco_json={demo / 'annotations' / 'instances_val.json'}",
            "predict.draw=true",
            "predict.draw_score_thresh=0.0",
            f"run_dir={tmp_path / 'predict'}",
        )
    )
    out = tmp_path / "predict"
    gt = COCO(str(demo / "annotations" / "instances_val.json"))
    dt = gt.loadRes(str(out / "detections.json"))
    assert len(dt.getAnnIds()) == result["detections"] == 8 * 5
    assert set(dt.getCatIds()) <= {1, 2, 3} and set(dt.getImgIds()) == set(gt.getImgIds())
    for ann in dt.loadAnns(
        dt.getAnnIds()
    ):  # original-image pixels (the images are larger than the 64 canvas)
        img = gt.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert x >= -1e-3 and x + w <= img["width"] + 1e-3 and y + h <= img["height"] + 1e-3
    assert max(a["bbox"][0] + a["bbox"][2] for a in dt.loadAnns(dt.getAnnIds())) > 64
    assert len(COCO(str(out / "images.json")).loadRes(str(out / "detections.json")).anns) == 40
    assert len(list((out / "predict_drawn").glob("*.png"))) == 8


def _gt_as_predictions(tmp_path):
    """``small_coco`` ground truth as perfect predictions, through the library's metric inputs.

    Returns ``(splits, head, preds, gts, targets)``: predictions and ground truth in original pixels.
    """
    small_coco(tmp_path)  # includes a crowd box and an image with no boxes
    splits = coco_splits(tmp_path, val_fraction=0.34)
    splits.val = splits.train + splits.val
    datamodule = DetectionDataModule(splits, image_size=64, mean=(0.5, 0.5, 0.5))
    preds, targets = [], []
    for _, target in datamodule.dataset("val"):  # the eval letterbox: exact map back to the original
        n = len(target["labels"])
        preds.append({"boxes": target["boxes"], "scores": torch.ones(n), "labels": target["labels"]})
        targets.append(target)
    body = build_backbone({"name": "test_efficientnet", "pretrained": False}, DEFAULT_STRIDES)
    head = DetectionHead(body, 2, image_size=64, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    return (splits, head, *head.metric_inputs(preds, targets), targets)


def test_ground_truth_fed_back_as_predictions_scores_map_one(tmp_path):
    """COCO round trip: letterboxed targets -> library evaluation in original pixels, and -> results JSON."""
    splits, head, p, g, targets = _gt_as_predictions(tmp_path)
    metric = head.build_metrics()
    keep = [t["iscrowd"] == 0 for t in targets]  # a detector would not predict the crowd region
    metric.update([{k: v[m] for k, v in d.items()} for d, m in zip(p, keep)], g)
    values = metric.compute()
    assert values["map"].item() == pytest.approx(1.0) and values["map_50"].item() == pytest.approx(1.0)
    detections = [
        {"boxes": d["boxes"][m], "scores": d["scores"][m], "labels": d["labels"][m]} for d, m in zip(p, keep)
    ]
    ids = [t["image_id"] for t in targets]
    (tmp_path / "results.json").write_text(json.dumps(coco_results(detections, ids, splits.category_ids)))
    gt = COCO(str(tmp_path / "annotations" / "instances_train.json"))
    evaluation = COCOeval(gt, gt.loadRes(str(tmp_path / "results.json")), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0) and evaluation.stats[1] == pytest.approx(1.0)


def test_a_missed_object_lowers_map(tmp_path):
    _, head, p, g, targets = _gt_as_predictions(tmp_path)
    metric = head.build_metrics()
    p = [{k: v[:0] for k, v in d.items()} if len(t["labels"]) == 2 else d for d, t in zip(p, targets)]
    metric.update(p, g)
    assert metric.compute()["map"].item() < 0.9


def test_task_and_data_must_agree(tiny_cfg):
    with pytest.raises(
        ValueError, match=r"task=detection but the data source .* gives classification data.*data=coco"
    ):
        train(tiny_cfg("task=detection"))


def test_demo_is_the_default_detection_data_and_classification_is_unchanged():
    det = compose_cfg("task=detection")
    assert det.data.source._target_.endswith("demo_detection_splits") and det.head.detector == "retinanet"
    # conf/task_data/detection_demo_detection.yaml: the quick from-scratch CPU demo, after the task
    assert (det.head.fpn_channels, det.model.drop_path_rate, det.trainer.gradient_clip_val) == (64, 0.0, 10.0)
    # ... which keeps the from-scratch recipe it was measured with, not the fine-tuning one below
    assert (det.finetune.bn, det.optim.backbone_lr_mult, det.ema.enabled, det.scheduler.name) == (
        "train", 1.0, True, "none")
    assert (det.data.batch_size, det.head.anchor_sizes) == (8, None)
    coco = compose_cfg("task=detection", "data=coco")
    assert (coco.head.fpn_channels, coco.model.drop_path_rate) == (128, 0.1)
    # the measured detection fine-tuning recipe (docs/studies/detection-recipe.md); without the clipping a
    # fine-tune barely learns, so it must reach every detection run that does not switch it off
    recipe = (coco.trainer.gradient_clip_val, coco.finetune.bn, coco.optim.backbone_lr_mult,
              coco.optim.weight_decay, coco.scheduler.name, coco.ema.enabled, coco.data.batch_size,
              list(coco.data.augment.scale), coco.data.augment.color_jitter, coco.head.anchor_sizes)
    assert recipe == (10.0, "frozen", 0.1, 1e-4, "cosine", False, 2, [1.0, 1.0], 0.0, "auto")
    for data in ("coco", "yolo"):
        cfg = compose_cfg("task=detection", f"data={data}", "finetune=gradual")
        assert cfg.trainer.gradient_clip_val == 10
    # user choices still win over the task's recipe
    mine = compose_cfg("task=detection", "data=coco", "scheduler=step", "optim.weight_decay=0.05",
                       "head.fpn_channels=256")
    assert (mine.scheduler.name, mine.optim.weight_decay, mine.head.fpn_channels) == ("step", 0.05, 256)
    cls = compose_cfg()
    assert cls.task == "classification" and cls.checkpoint.monitor == "val/acc1"
    assert dict(cls.head) == {"label_smoothing": 0.1}
    recipe = (cls.trainer.gradient_clip_val, cls.finetune.bn, cls.optim.backbone_lr_mult, cls.scheduler.name)
    assert recipe == (None, "train", 1.0, "none") and cls.ema.enabled


@pytest.mark.slow
def test_validate_mode_on_a_detection_checkpoint(det_cfg, tmp_path):
    summary = train(det_cfg("trainer.limit_train_batches=1"))
    result = run(
        det_cfg("mode=validate", f"ckpt_path={summary['last_checkpoint']}", f"run_dir={tmp_path / 'v'}")
    )
    assert "val/map" in result["metrics"] and result["metrics"]["val/loss"] > 0


def _detection_checkpoint(path):
    module = DetectionModule(
        class_names=["a", "b"],
        model={"name": "test_efficientnet"},
        head={"fpn_channels": 32},
        data={"image_size": 64},
    )
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def test_embed_refuses_a_detection_checkpoint(tiny_cfg, tmp_path, image_folder):
    ckpt = _detection_checkpoint(tmp_path / "det.ckpt")
    with pytest.raises(
        ValueError, match=r"task=detection does not support mode=embed; it supports train, validate"
    ):
        run(tiny_cfg("mode=embed", f"ckpt_path={ckpt}", f"predict.input={image_folder}"))


def test_predict_coco_json_must_list_the_images(tmp_path):
    small_coco(tmp_path)
    paths = [tmp_path / "train" / "0.png", tmp_path / "train" / "1.png"]
    assert image_ids(paths, tmp_path / "train", tmp_path / "annotations" / "instances_train.json") == [10, 11]
    (tmp_path / "train" / "extra.png").write_bytes((tmp_path / "train" / "0.png").read_bytes())
    with pytest.raises(
        ValueError, match=r"predict.coco_json=.* lists no image 'extra.png' \(from predict.input\)"
    ):
        image_ids(
            [tmp_path / "train" / "extra.png"],
            tmp_path / "train",
            tmp_path / "annotations" / "instances_train.json",
        )
