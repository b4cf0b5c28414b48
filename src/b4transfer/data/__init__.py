"""Datasets for b4transfer: image folders, CSVs, a generated demo set, transforms, data module."""

from b4transfer.data.csvdata import read_csv
from b4transfer.data.datamodule import ClassificationDataModule
from b4transfer.data.dataset import ImageDataset, PathDataset
from b4transfer.data.demo import DEMO_CLASSES, ensure_demo
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

__all__ = [
    "DEMO_CLASSES",
    "IMG_EXTENSIONS",
    "ClassificationDataModule",
    "DatasetSplits",
    "ImageDataset",
    "ImageLoadError",
    "PathDataset",
    "Sample",
    "build_transforms",
    "check_class_count",
    "check_image",
    "class_counts",
    "draft_size_for",
    "drop_unreadable",
    "ensure_demo",
    "load_rgb",
    "read_csv",
    "scan_folder",
    "stratified_split",
]
