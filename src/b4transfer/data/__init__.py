"""Datasets for b4transfer: image folders, CSVs, COCO / YOLO detection sets, generated demo sets,
transforms, data modules."""

from b4transfer.data.coco import coco_splits
from b4transfer.data.csvdata import read_csv
from b4transfer.data.datamodule import ClassificationDataModule
from b4transfer.data.dataset import ImageDataset, PathDataset
from b4transfer.data.demo import DEMO_CLASSES, ensure_demo
from b4transfer.data.demo_detection import ensure_demo_detection
from b4transfer.data.detection import DetectionSample, DetectionSplits
from b4transfer.data.detection_datamodule import DetectionDataModule
from b4transfer.data.folder import scan_folder
from b4transfer.data.images import IMG_EXTENSIONS, ImageLoadError, check_image, load_rgb
from b4transfer.data.splits import (
    DatasetSplits,
    Sample,
    check_class_count,
    class_counts,
    drop_unreadable,
    stratified_split,
)
from b4transfer.data.transforms import build_transforms, draft_size_for
from b4transfer.data.yolo import yolo_splits

__all__ = [
    "DEMO_CLASSES",
    "IMG_EXTENSIONS",
    "ClassificationDataModule",
    "DatasetSplits",
    "DetectionDataModule",
    "DetectionSample",
    "DetectionSplits",
    "ImageDataset",
    "ImageLoadError",
    "PathDataset",
    "Sample",
    "build_transforms",
    "check_class_count",
    "check_image",
    "class_counts",
    "coco_splits",
    "draft_size_for",
    "drop_unreadable",
    "ensure_demo",
    "ensure_demo_detection",
    "load_rgb",
    "read_csv",
    "scan_folder",
    "stratified_split",
    "yolo_splits",
]
