"""Checkpoints written before the task contract (one ``TransferModule`` class whose hyper-parameters held
``task``, ``multi_label`` and ``category_ids`` for every task) still load, as the same task, with the
same state-dict keys."""

from __future__ import annotations

import json

import pytest
import torch

from b4transfer import tasks
from b4transfer.tasks.classification import ClassificationModule
from b4transfer.tasks.detection import DetectionModule

MODEL = {"name": "test_efficientnet", "pretrained": False, "weights": None, "drop_path_rate": 0.0}


def _old_checkpoint(path, module, **old_hparams):
    """What the earlier ``TransferModule`` saved: every __init__ argument, defaults included."""
    hparams = {k: v for k, v in module.hparams.items() if k not in ("task", "weights_origin")}
    hparams.update(old_hparams)
    torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict(), "epoch": 0}, path)
    return path


@pytest.mark.parametrize("task", [None, "classification"])
def test_an_old_classification_checkpoint_loads(tmp_path, task):
    module = ClassificationModule(class_names=["a", "b"], model=MODEL, head={"label_smoothing": 0.1})
    extra = {"category_ids": None} | ({} if task is None else {"task": task})  # None: before detection
    loaded = tasks.load_module(_old_checkpoint(tmp_path / "old.ckpt", module, **extra))
    assert isinstance(loaded, ClassificationModule) and loaded.class_names == ["a", "b"]
    assert loaded.state_dict().keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_an_old_detection_checkpoint_loads(tmp_path):
    module = DetectionModule(
        class_names=["a", "b"],
        model=MODEL,
        category_ids=[3, 7],
        head={"fpn_channels": 32},
        data={"image_size": 64},
    )
    path = _old_checkpoint(tmp_path / "old.ckpt", module, task="detection", multi_label=False)
    loaded = tasks.load_module(path)
    assert isinstance(loaded, DetectionModule) and loaded.category_ids == [3, 7]
    assert {k for k in loaded.state_dict() if not k.startswith("backbone.")} == {
        k for k in module.state_dict() if not k.startswith("backbone.")
    }
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())


def test_where_the_weights_came_from_survives_a_checkpoint_and_older_ones_derive_it(tmp_path):
    module = ClassificationModule(class_names=["a", "b"], model=MODEL)
    assert module.hparams["weights_origin"] == {"source": "random"}
    # a checkpoint from before weights_origin, of a model.pretrained=true run: derived from its model settings
    hub = {**MODEL, "name": "test_efficientnet", "pretrained": True}
    old = _old_checkpoint(tmp_path / "old.ckpt", module, task="classification", model=hub)
    loaded = tasks.load_module(old)
    assert loaded.hparams["weights_origin"] == {
        "source": "hub", "name": "test_efficientnet.r160_in1k", "tag": "r160_in1k",
        "hf_hub_id": "timm/test_efficientnet.r160_in1k",
    }
    assert loaded.hparams["model"]["pretrained"] is False  # rebuilt without a download, as before
    # a recorded origin is kept, though the rebuilt module itself starts random
    recorded = {"source": "file", "file": "/data/start.safetensors", "sha256": "ab" * 32}
    module.hparams["weights_origin"] = recorded
    new = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save(new, tmp_path / "new.ckpt")
    assert tasks.load_module(tmp_path / "new.ckpt").hparams["weights_origin"] == recorded


def test_a_detector_saved_without_its_fpn_width_loads_at_the_width_its_weights_have(tmp_path):
    """A module built in Python with ``head={}`` recorded no ``fpn_channels``; it had the default of its day
    (256, before the default followed conf/task/detection.yaml's 128): checkpoint and export load as built."""
    from b4transfer.tasks.detection.export import export_detector, load_exported_detector

    wide = {"fpn_channels": 256}
    module = DetectionModule(class_names=["a"], model=MODEL, head=wide, data={"image_size": 64})
    path = _old_checkpoint(tmp_path / "old.ckpt", module, task="detection", head={})
    loaded = tasks.load_module(path)
    assert loaded.head.detector.backbone.out_channels == 256
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())
    export_dir = export_detector(module, tmp_path / "export")
    config = json.loads((export_dir / "config.json").read_text())
    config["head"].pop("fpn_channels")
    (export_dir / "config.json").write_text(json.dumps(config))
    detector, _ = load_exported_detector(export_dir)
    assert detector.backbone.out_channels == 256
