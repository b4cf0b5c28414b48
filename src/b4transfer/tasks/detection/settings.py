"""The schema of ``task=detection``'s config: its ``data`` (``conf/data/_detection_common.yaml``, coco, yolo
and the demo) and ``head`` (``conf/task/detection.yaml``)."""

from dataclasses import dataclass
from typing import Any

from b4transfer.settings import DenseDataSettings, RunSettings, Schema, given


@dataclass
class DetectionDataSettings(DenseDataSettings):
    """Boxes: COCO instances JSON, the YOLO layout, or the generated demo."""

    names_file: str | None = given()  # data=yolo


@dataclass
class DetectionHeadSettings(Schema):
    """``head``: FPN over the backbone maps + a torchvision detector."""

    detector: str = given()  # retinanet | fcos | faster_rcnn
    feature_strides: list[int] | None = given()
    fpn_channels: int = given()
    anchor_sizes: Any = given()  # auto | null | sizes per level
    aspect_ratios: Any = given()  # null | ratios (per level)
    score_thresh: float = given()
    nms_thresh: float = given()
    detections_per_img: int = given()
    head_norm: str | None = given()
    box_loss: str | None = given()
    detector_kwargs: dict[str, Any] = given()  # any other argument of the torchvision detector


@dataclass
class DetectionSettings(RunSettings):
    """``task=detection`` (no ``loss`` node: the detector owns its losses)."""

    data: DetectionDataSettings = given()
    head: DetectionHeadSettings = given()
