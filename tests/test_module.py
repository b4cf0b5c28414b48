"""TransferModule and its classification head: data config, metrics, checkpoint contents."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torchvision.transforms import CenterCrop, InterpolationMode, Resize

from b4transfer.data.transforms import build_transforms
from b4transfer.modes import train
from b4transfer.tasks import load_module
from b4transfer.tasks.classification import ClassificationModule
from b4transfer.tasks.classification.head import ClassificationHead


def test_b4_eval_transform_is_384_crop_1_bicubic_as_timm_test_size():
    module = ClassificationModule(class_names=["a", "b"], model={"name": "efficientnet_b4.ra2_in1k"})
    _, eval_tf = build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])
    resize = next(t for t in eval_tf.transforms if isinstance(t, Resize))
    crop = next(t for t in eval_tf.transforms if isinstance(t, CenterCrop))
    # crop 1.0: resize straight to 384, nothing cropped away
    assert resize.size in (384, [384], (384, 384), [384, 384])
    assert resize.interpolation == InterpolationMode.BICUBIC
    assert tuple(crop.size) == (384, 384)
    reference = create_transform(**resolve_model_data_config(module.backbone, use_test_size=True))
    assert repr(eval_tf) == repr(reference)
    image = Image.new("RGB", (500, 400), (10, 20, 30))
    assert torch.equal(eval_tf(image), reference(image)) and eval_tf(image).shape == (3, 384, 384)


def test_top5_only_with_at_least_five_classes():
    assert "acc5" not in ClassificationHead(8, 4).build_metrics()
    assert "acc5" in ClassificationHead(8, 5).build_metrics()


def test_head_rejects_bad_settings():
    with pytest.raises(ValueError, match="head.label_smoothing must be in"):
        ClassificationHead(8, 3, label_smoothing=1.5)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        ClassificationHead(8, 1)


def test_soft_targets_and_label_smoothing_give_finite_losses():
    head = ClassificationHead(8, 3, label_smoothing=0.1)
    logits = torch.randn(4, 3)
    hard = head.loss(logits, torch.tensor([0, 1, 2, 0]))
    soft = head.loss(logits, torch.full((4, 3), 1 / 3))
    assert torch.isfinite(hard) and torch.isfinite(soft)


def test_checkpoint_carries_class_names_and_rebuilds_without_network(tiny_cfg):
    summary = train(tiny_cfg())
    ckpt = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["class_names"] == ["blue", "green", "red"]
    module = load_module(summary["last_checkpoint"])
    assert module.class_names == ["blue", "green", "red"] and not module.training
    assert module.data_config["train"]["input_size"] == (3, 64, 64)


def test_load_module_rejects_foreign_checkpoints(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a b4transfer checkpoint"):
        load_module(path)


class Payload:
    pass


def test_load_module_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    payload = Payload()  # an arbitrary class: running its pickle could run any code
    torch.save({"hyper_parameters": {"class_names": ["a", "b"]}, "payload": payload}, path)
    with pytest.raises(ValueError, match=r"is not a checkpoint \(it holds pickled Python objects"):
        load_module(path)
