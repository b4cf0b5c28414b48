"""The Python API: the command line's modes as functions, with the same keys, checks and errors.

Example::

    import b4transfer as b4

    run = b4.train(task="classification", data="folder",
                   overrides=["data.root=/data/pets", "trainer.max_epochs=5"])
    run.metrics["val/acc1"], run.best_checkpoint, run.export_dir, run.summary

    model = b4.load(run.export_dir)                 # or a checkpoint, or a run directory; any task
    results = model.predict(["a.jpg", pil_image])   # one result per image, of the task's type
    model.validate(data="folder", overrides=["data.root=/data/pets"])
    model.export(format="onnx")

    body = b4.load_backbone(run.export_dir)         # the fine-tuned timm features_only model
    detector_body = b4.torchvision_backbone(run.export_dir, fpn=True)   # out_channels, OrderedDict

Every function composes the config exactly as ``python run.py`` (Hydra's compose API inside
``initialize_config_dir``: no change of working directory, no global Hydra state left behind), runs the
same mode function and writes the same run directory (``outputs/<date>/<time>`` unless ``run_dir=``).
A mistake the CLI reports in one line is raised as :class:`~b4transfer.errors.UserError` with the same
message. ``b4.build(...)`` gives the LightningModule, DataModule and Trainer of a training run unfitted.
"""

from __future__ import annotations

import os
from pathlib import Path

from b4transfer.api.model import Model, find_checkpoint, load
from b4transfer.api.runs import Run, audit, build, embed, export, lr_find, predict, run, test, train, validate

__all__ = ["Model", "Run", "audit", "backbone", "build", "embed", "export", "find_checkpoint", "load",
           "lr_find", "predict", "run", "test", "torchvision_backbone", "train", "validate"]


def backbone(path: str | os.PathLike, *, out_indices: tuple[int, ...] | None = None):
    """The fine-tuned backbone of ``path`` as timm's ``features_only`` model (eval mode, CPU).

    From an export or run directory this is plain timm's own call on ``export/backbone/``::

        timm.create_model("local-dir:<export>/backbone", pretrained=True, features_only=True)

    Args:
        path: An export folder, a run directory, a backbone folder or a checkpoint of any task.
        out_indices: The stages whose maps it returns (default: all; B4 strides 2, 4, 8, 16, 32).
    """
    from b4transfer.backbone.downstream import find_backbone_dir, load_backbone_dir

    if Path(path).is_dir() and find_backbone_dir(path) is not None:
        return load_backbone_dir(path, out_indices=out_indices)
    return load(path).backbone(out_indices=out_indices)


def torchvision_backbone(
    path: str | os.PathLike,
    *,
    fpn: bool = True,
    out_indices: tuple[int, ...] | None = None,
    fpn_channels: int = 256,
):
    """The fine-tuned backbone of ``path`` ready for torchvision's detectors (``FasterRCNN``,
    ``RetinaNet``, ``FCOS``, ``MaskRCNN``): a module with ``out_channels`` whose forward returns an
    ``OrderedDict`` of feature maps (:class:`~b4transfer.backbone.downstream.TorchvisionBackbone`).

    Example::

        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.ops import MultiScaleRoIAlign

        body = b4.torchvision_backbone(run.export_dir, fpn=True)     # maps "0", "1", "2", "pool"
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4)
        detector = FasterRCNN(body, num_classes=3, rpn_anchor_generator=anchors,
                              box_roi_pool=MultiScaleRoIAlign(body.featmap_names, 7, 2))

    Args:
        path: An export folder, a run directory, a backbone folder or a checkpoint of any task.
        fpn: Put torchvision's ``FeaturePyramidNetwork`` (new weights) on the maps; without it the
            stride-32 map alone is returned, as ``"0"``.
        out_indices: The stages used (default: strides 8, 16, 32 with ``fpn``, else 32).
        fpn_channels: The FPN's width (``out_channels``).
    """
    from b4transfer.backbone.downstream import (
        TorchvisionBackbone,
        architecture_of,
        default_out_indices,
        load_backbone_dir,
    )

    name = architecture_of(path)
    if name is None:
        return load(path).torchvision_backbone(fpn=fpn, out_indices=out_indices, fpn_channels=fpn_channels)
    indices = out_indices if out_indices is not None else default_out_indices(name, fpn=fpn)
    body = load_backbone_dir(path, out_indices=indices)
    return TorchvisionBackbone(body, fpn=fpn, fpn_channels=fpn_channels).train()
