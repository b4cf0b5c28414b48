"""Checkpoints written before the task contract (one ``TransferModule`` class whose hyper-parameters held
``task``, ``multi_label`` and ``category_ids`` for every task) still load, as the same task, with the
same state-dict keys."""

from __future__ import annotations

import pytest
import torch

from b4transfer import tasks
from b4transfer.tasks.classification import ClassificationModule
from b4transfer.tasks.detection import DetectionModule

MODEL = {"name": "test_efficientnet", "pretrained": False, "weights": None, "drop_path_rate": 0.0}


def _old_checkpoint(path, module, **old_hparams):
    """What the earlier ``TransferModule`` saved: every __init__ argument, defaults included."""
    hparams = {k: v for k, v in module.hparams.items() if k != "task"}
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
