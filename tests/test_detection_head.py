"""The detection head: FPN sized from feature_info, three torchvision detectors, losses and outputs."""

from __future__ import annotations

import ast
import inspect
import math

import pytest
import torch

from b4transfer.backbone import create_backbone
from b4transfer.tasks.base import build_backbone
from b4transfer.tasks.detection import DetectionModule
from b4transfer.tasks.detection import head as detection_head
from b4transfer.tasks.detection.head import DetectionHead, build_detector
from b4transfer.tasks.detection.module import DEFAULT_STRIDES

TINY = {"name": "test_efficientnet", "pretrained": False}


def _module(detector: str, **head) -> DetectionModule:
    torch.manual_seed(0)
    return DetectionModule(
        class_names=["a", "b", "c"],
        model=TINY,
        data={"image_size": 64},
        head={"detector": detector, "fpn_channels": 64 if detector == "fcos" else 32, **head},
    )


def _target(boxes, labels, crowd=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels, dtype=torch.int64)
    return {
        "boxes": boxes,
        "labels": labels,
        "iscrowd": torch.zeros_like(labels) if crowd is None else torch.tensor(crowd),
    }


@pytest.mark.parametrize("detector", ["retinanet", "fcos", "faster_rcnn"])
def test_train_step_gives_finite_losses_with_boxes_and_with_empty_images(detector):
    module = _module(detector).train()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    batches = {
        "boxes": [_target([[4, 6, 30, 40], [35, 10, 60, 30]], [0, 2]), _target([[10, 10, 50, 50]], [1])],
        "one empty image": [_target([[4, 6, 30, 40]], [0]), _target([], [])],
        "only empty images": [_target([], []), _target([], [])],
    }
    for name, targets in batches.items():
        module.zero_grad()
        parts = module(images, targets)  # train mode: torchvision's loss dict
        losses = sum(parts.values())
        assert all(torch.isfinite(v) for v in parts.values()), (name, parts)
        losses.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        if name == "boxes":
            assert losses > 0


@pytest.mark.parametrize("detector", ["retinanet", "fcos", "faster_rcnn"])
def test_eval_output_is_boxes_scores_labels_in_the_input_images_pixels(detector):
    module = _module(detector, score_thresh=0.0, detections_per_img=50).eval()
    # Not the 64 px canvas: the detector resizes to it internally and maps the boxes back.
    images = [torch.rand(3, 96, 128), torch.rand(3, 64, 64)]
    with torch.no_grad():
        out = module(images)
    for det, (height, width) in zip(out, [(96, 128), (64, 64)]):
        assert set(det) == {"boxes", "scores", "labels"}
        n = len(det["boxes"])
        assert (
            0 < n <= 50
            and det["boxes"].shape == (n, 4)
            and det["scores"].shape == det["labels"].shape == (n,)
        )
        boxes = det["boxes"]
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= width
        assert boxes[:, 1::2].min() >= 0 and boxes[:, 1::2].max() <= height
        assert (
            det["labels"].min() >= 0 and det["labels"].max() < 3
        )  # contiguous labels, also for Faster R-CNN
    assert out[0]["boxes"][:, 2].max() > 64  # the first image's boxes span its own 128 px, not the canvas


@pytest.mark.parametrize("name", ["efficientnet_b4", "test_efficientnet"])
def test_fpn_input_channels_equal_feature_info_channels(name):
    body = build_backbone({"name": name, "pretrained": False}, DEFAULT_STRIDES)
    head = DetectionHead(body, 2, image_size=64, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    fpn_in = [block[0].in_channels for block in head.fpn.inner_blocks]
    assert fpn_in == body.feature_info.channels()
    assert body.feature_info.reduction() == [8, 16, 32]
    if name == "efficientnet_b4":
        assert fpn_in == [56, 160, 448]  # the model card's stride 8/16/32 maps


def test_head_code_holds_no_channel_literals():
    tree = ast.parse(inspect.getsource(detection_head))
    ints = {
        node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and type(node.value) is int
    }
    assert not ints & {24, 40, 48, 56, 64, 112, 160, 320, 448}, ints


def test_the_body_is_shared_not_duplicated():
    module = _module("retinanet")
    assert module.head.detector.backbone.get_body() is module.backbone
    head_params = {id(p) for p in module.head.parameters()}
    assert not head_params & {id(p) for p in module.backbone.parameters()}
    assert not [k for k in module.state_dict() if k.startswith("head.") and ".body." in k]


@pytest.mark.parametrize("detector", ["retinanet", "faster_rcnn"])
def test_validation_loss_changes_no_state(detector):
    module = _module(detector).eval()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [_target([[4, 6, 30, 40]], [0]), _target([], [])]
    buffers = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    rng = torch.get_rng_state()
    first = module.head.validation_loss(images, targets)
    second = module.head.validation_loss(images, targets)
    assert all(math.isfinite(v) for v in first.values()) and first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # fixed-seed sampling: reproducible
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(buffers[k], v) for k, v in module.backbone.state_dict().items())
    assert not any(m.training for m in module.modules())


def test_crowd_boxes_are_left_out_of_the_training_loss():
    module = _module("retinanet").train()
    images = [torch.rand(3, 64, 64)]
    torch.manual_seed(1)
    plain = module.head(images, [_target([[4, 6, 30, 40]], [0])])
    torch.manual_seed(1)
    crowd = module.head(images, [_target([[4, 6, 30, 40], [20, 20, 60, 60]], [0, 1], crowd=[0, 1])])
    assert all(torch.allclose(plain[k], crowd[k]) for k in plain)


def _body():
    return create_backbone("test_efficientnet", pretrained=False, features_only=True, out_indices=(2, 3, 4))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"detector": "yolo"},
            r"head.detector='yolo' is invalid: choose one of \['retinanet', 'fcos', 'faster_rcnn'\]",
        ),
        (
            {"detector": "fcos", "fpn_channels": 48},
            r"head.fpn_channels=48 is invalid: .*FCOS: a multiple of 32",
        ),
        (
            {"detector": "fcos", "fpn_channels": 32},  # 64 px: P7 is 1x1, GroupNorm(32) of single values
            r"head.fpn_channels=32 is invalid: at image size 64 FCOS's coarsest level is 1x1.*=64",
        ),
        (
            {"anchor_sizes": [[32], [64]]},
            r"head.anchor_sizes=\[\[32\], \[64\]\] is invalid: give one list .* 5 levels",
        ),
        ({"score_thresh": 1.5}, r"head.score_thresh=1.5 is invalid"),
        (
            {"detector": "fcos", "fpn_channels": 64, "head_norm": "group"},
            r"head.head_norm='group' / head.box_loss=None apply to RetinaNet's heads only",
        ),
        ({"head_norm": "batch"}, r"head.head_norm='batch' is not one of \[None, 'group'\]"),
        ({"box_loss": "iou"}, r"head.box_loss='iou' is not one of"),
        ({"head_norm": "group", "fpn_channels": 48}, r"head_norm=group needs head.fpn_channels divisible"),
        (
            {"detector_kwargs": {"fg_iou": 0.5}},
            r"detector_kwargs has \['fg_iou'\].*Fix: use any of .*fg_iou_thresh",
        ),
    ],
)
def test_bad_head_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        build_detector(_body(), 2, image_size=64, image_mean=(0.5,) * 3, image_std=(0.5,) * 3, **settings)


def test_feature_strides_not_offered_by_the_backbone():
    with pytest.raises(
        ValueError, match=r"head.feature_strides=\[8, 16, 64\]: test_efficientnet gives feature maps"
    ):
        build_backbone(TINY, [8, 16, 64])


def test_anchor_sizes_follow_the_strides():
    det = build_detector(_body(), 2, image_size=64, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    assert [s[0] for s in det.anchor_generator.sizes] == [32, 64, 128, 256, 512]  # 4 x (8 ... 128)
    fcos = build_detector(
        _body(), 2, image_size=64, image_mean=(0.5,) * 3, image_std=(0.5,) * 3, detector="fcos"
    )
    assert fcos.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))


def test_the_head_follows_a_replaced_backbone():
    module = _module("retinanet").eval()
    images = [torch.rand(3, 64, 64)]
    copy = build_backbone(TINY, DEFAULT_STRIDES).eval()
    module.backbone = copy  # e.g. a callback swapping in a converted copy
    module.predict_step(
        (images, [{"index": 0, "scale": torch.ones(4), "orig_size": torch.tensor([64, 64])}]), 0
    )
    assert module.head.detector.backbone.get_body() is copy


def test_retinanet_v2_head_has_groupnorm_and_a_giou_box_loss():
    plain, v2 = _module("retinanet"), _module("retinanet", head_norm="group", box_loss="giou")
    norms = [m for m in v2.head.detector.head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 8 and all(m.num_groups == 32 for m in norms)  # 4 convs x 2 heads
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.modules())
    assert v2.head.detector.head.regression_head._loss_type == "giou"
    assert plain.head.detector.head.regression_head._loss_type == "l1"
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [_target([[4, 6, 30, 40]], [0]), _target([[10, 10, 50, 50]], [1])]
    parts = v2.train()(images, targets)
    assert all(torch.isfinite(v) for v in parts.values()) and parts["bbox_regression"] > 0
