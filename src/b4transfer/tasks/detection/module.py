"""``DetectionModule``: a timm ``features_only`` backbone plus an FPN + torchvision detector head.

``self.backbone`` is the timm ``features_only`` model (what freezing schedules and the backbone optimizer
groups act on), and ``self.head`` is a :class:`~b4transfer.tasks.detection.head.DetectionHead` (FPN +
torchvision detector), which owns the loss, the post-processing and the COCO mAP metric. Batches are
``(images, targets)`` lists from :class:`~b4transfer.tasks.detection.data.datamodule.DetectionDataModule`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from b4transfer.backbone import canvas_data_config
from b4transfer.errors import UserError
from b4transfer.settings.module import ModuleSettings, kwargs_of
from b4transfer.tasks.base import TaskModule, metric_name
from b4transfer.tasks.detection.head import DetectionHead, to_original
from b4transfer.tasks.detection.onnx_graph import detector_settings
from b4transfer.tasks.detection.settings import DetectionSettings
from b4transfer.tasks.detection.tta import detect_tta

DEFAULT_STRIDES = (8, 16, 32)
# The losses each torchvision detector returns (logged as train/<key> and val/<key>)
LOSS_KEYS = {
    "retinanet": ("classification", "bbox_regression"),
    "fcos": ("classification", "bbox_regression", "bbox_ctrness"),
    "faster_rcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
}
_NOT_LOGGED = ("classes", "map_per_class", "mar_100_per_class")  # per-class entries: logged as ap_<name>


class DetectionModule(TaskModule):
    """Fine-tunes a pretrained timm backbone as the body of a torchvision detector.

    Args:
        category_ids: the data source's id of each class, for COCO results JSON.
        calibration: ``{"score_thresholds": {class: threshold}}`` chosen on validation after training
            (see ``calibration.py``), applied by predict; ``None``: ``predict.draw_score_thresh``.
        **shared: :class:`~b4transfer.tasks.base.TaskModule`'s: ``class_names`` (object classes, index =
            label), ``model``, ``head`` (:class:`~b4transfer.tasks.detection.head.DetectionHead` settings,
            plus ``feature_strides``), ``optim``, ``scheduler``, ``data`` (``image_size``: the letterbox
            side, ``mean``, ``std``) and ``backbone`` (a ``features_only`` one, from
            :func:`~b4transfer.tasks.base.build_backbone` with the same ``model`` and strides).
    """

    task_name = "detection"
    schema = DetectionSettings
    data_keys = ("image_size", "mean", "std")  # the letterbox side and the normalisation

    def __init__(
        self, *, category_ids: list[int] | None = None, calibration: dict[str, Any] | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        settings = self.settings
        self.data_config = canvas_data_config(self.backbone, kwargs_of(settings.data))  # one letterbox size
        eval_cfg = self.data_config["eval"]
        ids = list(range(len(self.class_names))) if category_ids is None else [int(i) for i in category_ids]
        if len(ids) != len(self.class_names):
            raise UserError(f"category_ids {ids} must give one id per class name {self.class_names}.")
        self.category_ids = ids
        self.head = DetectionHead(
            self.backbone,
            len(self.class_names),
            image_size=self.image_size,
            image_mean=eval_cfg["mean"],
            image_std=eval_cfg["std"],
            feature_strides=self.feature_strides(settings),
            **{k: v for k, v in kwargs_of(settings.head).items() if k != "feature_strides"},
        )
        self.init_metrics(self.head.build_metrics)
        self.predict_output = "detections"

    def feature_strides(self, settings: ModuleSettings) -> list[int]:
        """``head.feature_strides``, by default :data:`DEFAULT_STRIDES`."""
        return list((settings.head and settings.head.feature_strides) or DEFAULT_STRIDES)

    def set_calibration(self, calibration: dict[str, Any] | None) -> None:
        """Remember per-class score thresholds (in the hyper-parameters: checkpoint, predict)."""
        self.hparams["calibration"] = dict(calibration) if calibration else None

    def score_thresholds(self, default: float) -> list[float]:
        """One score threshold per class: the calibrated ones, else ``default`` for all."""
        chosen = (self.hparams.get("calibration") or {}).get("score_thresholds") or {}
        return [float(chosen.get(name, default)) for name in self.class_names]

    def _share_backbone(self) -> None:
        # The head only references the body; follow it if a callback swapped self.backbone for a copy.
        self.head.detector.backbone.share_body(self.backbone)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self._share_backbone()
        images, targets = batch
        losses = self.head(images, targets)
        loss = sum(losses.values())
        values = {"train/loss": loss, **{f"train/{key}": value for key, value in losses.items()}}
        self.log_train(values, batch_size=len(images), prog_bar=("train/loss",))
        return loss

    def metric_names(self) -> list[str]:
        losses = LOSS_KEYS[self.head.detector_name]
        with warnings.catch_warnings():  # an empty compute gives every key ("called before update")
            warnings.simplefilter("ignore")
            keys = [k for k in self.val_metrics.clone().compute() if k not in _NOT_LOGGED]
        return [
            "train/loss", *(f"train/{k}" for k in losses), "val/loss", *(f"val/{k}" for k in losses),
            *(f"val/{k}" for k in keys), *(f"val/ap_{metric_name(name)}" for name in self.class_names),
        ]

    # -------------------------------------------------------------- evaluation (steps: TaskModule)
    def eval_losses(self, outputs: list[dict], inputs: list[torch.Tensor], targets: list[dict]) -> dict:
        """The detector's own losses on the batch (computed apart from the detections ``outputs``)."""
        self._share_backbone()
        losses = self.head.validation_loss(inputs, targets)
        return {"loss": sum(losses.values()), **losses}

    def update_metrics(self, metrics, outputs: list[dict], targets: list[dict]) -> None:
        metrics.update(*self.head.metric_inputs(outputs, targets))

    def log_metrics(self, values: dict[str, Any], stage: str) -> None:
        classes = torch.atleast_1d(values.pop("classes")).tolist()
        per_class = torch.atleast_1d(values.pop("map_per_class"))
        values.pop("mar_100_per_class", None)
        for key, value in values.items():
            if torch.as_tensor(value).numel() == 1:
                self.log(
                    f"{stage}/{key}",
                    torch.as_tensor(value).float(),
                    prog_bar=key in ("map", "map_50"),
                    sync_dist=True,
                )
        if per_class.numel() == len(classes):
            for label, ap in zip(classes, per_class.tolist()):  # ap -1: absent from data and predictions
                if ap >= 0 and 0 <= label < len(self.class_names):
                    self.log(f"{stage}/ap_{metric_name(self.class_names[label])}", ap, sync_dist=True)

    def tta_forward(self, images: list[torch.Tensor]) -> list[dict]:
        """Detections (canvas pixels) merged over the views ``self.tta``: NMS + box voting at the head's
        ``nms_thresh``, see :mod:`b4transfer.tasks.detection.tta`."""
        self._share_backbone()
        settings = detector_settings(self.head.detector)  # the head's own (its defaults: build_detector's)
        return detect_tta(
            self.head, images, self.tta, detector=self.head.detector,
            iou=settings["nms_thresh"], max_det=settings["detections_per_img"],
        )

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Train mode: the head's loss dict. Eval mode: detections in canvas pixels."""
        self._share_backbone()
        return self.head(images, targets)

    def predict_step(self, batch, batch_idx: int = 0) -> list[dict]:
        self._share_backbone()
        images, metas = batch
        out = []
        for det, meta in zip(self.infer(images), metas):
            out.append(
                {
                    "index": int(meta["index"]),
                    "boxes": to_original(det["boxes"], meta).float().cpu(),
                    "scores": det["scores"].float().cpu(),
                    "labels": det["labels"].cpu(),
                }
            )
        return out
