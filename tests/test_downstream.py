"""The fine-tuned backbone downstream (issue 26, must-show 3): every export's ``backbone/`` folder gives the
library's feature maps through plain timm's ``local-dir:`` route; a torchvision Faster R-CNN trains on
the API's torchvision backbone; a classification export is the ``model.weights`` of a detection run."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import timm
import torch
from tests.conftest import TINY, make_image_folder
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

import b4transfer as b4
from b4transfer.errors import UserError, UserFileNotFoundError
from b4transfer.modes.common import export_module_backbone
from b4transfer.tasks import load_module

DETECTION = ("task=detection", "data=demo_detection", "data.source.image_size=64",
             "data.source.train_images=16", "data.source.val_images=8", "head.fpn_channels=32")
FAST = ("export.parity=false", "errors.enabled=false", "calibrate.enabled=false")


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classified")
    images = make_image_folder(tmp / "images")
    return b4.train(data="folder", overrides=[*TINY, *FAST, f"data.root={images}"], run_dir=tmp / "run")


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detected")
    overrides = [*TINY, *DETECTION, *FAST, f"data.source.root={tmp / 'demo'}"]
    return b4.train(overrides=overrides, run_dir=tmp / "run"), tmp


def _images(seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _same(maps, reference) -> None:
    assert [tuple(m.shape) for m in maps] == [tuple(r.shape) for r in reference]
    for m, r in zip(maps, reference):
        torch.testing.assert_close(m, r, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_classification_export_s_backbone_gives_its_feature_maps_through_plain_timm(classified):
    folder = classified.export_dir / "backbone"
    body = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True).eval()
    module = load_module(classified.best_checkpoint)  # what was exported
    x = _images()
    _same(body(x), module.backbone.forward_intermediates(x, intermediates_only=True))  # the trunk's stages
    _same(b4.load_backbone(classified.export_dir)(x), body(x))
    _same(b4.load_backbone(classified.best_checkpoint)(x), body(x))  # from the checkpoint, the same
    keys = set(safetensors.torch.load_file(str(folder / "model.safetensors")))
    assert keys == set(body.state_dict()), "exactly the features_only tensors: no classifier, no conv_head"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["num_classes"] == 0
    assert config["fine_tuned_for"] == "classification" and config["feature_out_indices"] is None
    assert config["pretrained_cfg"]["mean"] == list(module.data_config["eval"]["mean"])


@torch.no_grad()
def test_a_detection_checkpoint_s_backbone_gives_the_detector_s_feature_maps(detected, tmp_path):
    run, _ = detected
    module = load_module(run.best_checkpoint)
    x = _images(1)
    reference = module.backbone(x)  # the detector's body: the maps at strides 8, 16, 32
    indices = tuple(module.backbone.feature_info.out_indices)
    exported = b4.export_checkpoint(run.best_checkpoint, "timm", overrides=["data.num_workers=0"],
                                    run_dir=tmp_path / "export")
    folder = exported.export_dir / "backbone"
    assert json.loads((folder / "config.json").read_text())["feature_out_indices"] == list(indices)
    body = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True, out_indices=indices)
    _same(body.eval()(x), reference)
    _same(b4.load_backbone(run.best_checkpoint, out_indices=indices)(x), reference)
    _same(b4.load_backbone(run.run_dir, out_indices=indices)(x), reference)  # the training run's export


@torch.no_grad()
def test_a_segmentation_module_s_backbone_folder_gives_its_maps(tmp_path):
    parts = b4.build(task="segmentation", overrides=[*TINY, f"data.source.root={tmp_path / 'demo'}",
                     "data.source.image_size=64", "data.source.train_images=4", "data.source.val_images=2",
                     "data.image_size=64"], run_dir=tmp_path / "run")
    module = parts.module.eval()
    folder = export_module_backbone(module, tmp_path / "export" / "backbone")
    indices = tuple(module.backbone.feature_info.out_indices)
    body = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True, out_indices=indices)
    x = _images(2)
    _same(body.eval()(x), module.backbone(x))


def _boxes_batch() -> tuple[list[torch.Tensor], list[dict]]:
    """Two 64 px images, each a bright rectangle (class 1) and a dark one (class 2) on grey."""
    images, targets = [], []
    for shift in (0, 8):
        image = torch.full((3, 64, 64), 0.5)
        image[:, 8 + shift : 28 + shift, 6:30] = 1.0
        image[:, 36:58, 30 + shift : 54] = 0.0
        images.append(image)
        boxes = torch.tensor([[6, 8 + shift, 30, 28 + shift], [30 + shift, 36, 54, 58]], dtype=torch.float32)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2])})
    return images, targets


def _train_steps(detector, steps: int = 3) -> list[float]:
    images, targets = _boxes_batch()
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    detector.train()
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)  # the same RPN / RoI sampling every step: only the weights change the loss
        loss = sum(detector(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_a_torchvision_faster_rcnn_trains_on_the_api_backbone(classified):
    torch.manual_seed(0)
    body = b4.torchvision_backbone(classified.export_dir, fpn=True)
    assert body.out_channels == 256 and body.featmap_names == ["0", "1", "2"]
    assert body.strides == [8, 16, 32, 64]
    outputs = body(_images())
    assert list(outputs) == ["0", "1", "2", "pool"] and all(v.shape[1] == 256 for v in outputs.values())
    start = b4.load_backbone(classified.export_dir).state_dict()["conv_stem.weight"]
    assert torch.equal(body.body.state_dict()["conv_stem.weight"], start), "the fine-tuned weights"
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4)
    detector = FasterRCNN(body, num_classes=3, rpn_anchor_generator=anchors, min_size=64, max_size=64,
                          box_roi_pool=MultiScaleRoIAlign(body.featmap_names, 7, 2))
    losses = _train_steps(detector)
    assert all(math.isfinite(v) for v in losses) and losses[0] > losses[1] > losses[2], losses

    plain = b4.torchvision_backbone(classified.best_checkpoint, fpn=False)  # the stride-32 map alone
    assert plain.out_channels == 64 and list(plain(_images())) == ["0"]
    detector = FasterRCNN(plain, num_classes=3, min_size=64, max_size=64,
                          rpn_anchor_generator=AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),)),
                          box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2))
    assert all(math.isfinite(v) for v in _train_steps(detector, steps=1))


def test_a_classification_export_is_the_starting_point_of_a_detection_run(classified, tmp_path):
    exported = b4.load_backbone(classified.export_dir).state_dict()
    # the export folder (its timm classifier file), and the features_only file of its backbone/
    backbone_file = classified.export_dir / "backbone" / "model.safetensors"
    for i, weights in enumerate((classified.export_dir, backbone_file)):
        parts = b4.build(overrides=[*TINY, *DETECTION, f"data.source.root={tmp_path / 'demo'}",
                                    f"model.weights={weights}"], run_dir=tmp_path / f"run{i}")
        started = parts.module.backbone.state_dict()
        assert torch.equal(started["conv_stem.weight"], exported["conv_stem.weight"])
        assert all(torch.equal(started[k], v) for k, v in exported.items() if k in started)
        assert parts.module.hparams.weights_origin["source"] == "file"
    assert parts.module.hparams.weights_origin["file"].endswith("backbone/model.safetensors")
    fresh = b4.build(overrides=[*TINY, *DETECTION, f"data.source.root={tmp_path / 'demo'}"],
                     run_dir=tmp_path / "fresh").module.backbone.state_dict()
    assert not torch.equal(fresh["conv_stem.weight"], exported["conv_stem.weight"]), "the test can fail"


def test_what_holds_no_backbone_is_refused_with_the_fix(classified, tmp_path):
    with pytest.raises(UserError, match=r"model.weights=.*backbone/model.safetensors.* does not fit "
                                        r"model.name='test_efficientnet': missing keys \(\d+\): conv_head"):
        b4.build(data="folder", overrides=[*TINY, f"data.root={tmp_path}",
                 f"model.weights={classified.export_dir / 'backbone' / 'model.safetensors'}"],
                 run_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(UserFileNotFoundError, match=r"is a directory without weights: no model.safetensors"):
        b4.build(data="folder", overrides=[*TINY, f"data.root={tmp_path}", f"model.weights={tmp_path}"],
                 run_dir=tmp_path / "refused")
    with pytest.raises(UserError, match=r"holds no checkpoint b4transfer can load"):
        b4.load_backbone(tmp_path)
