"""What every task's data code shares: image reading and checks (and their cache), dataset splits, k-fold,
the image-folder scanner and the demo generator, box samples and COCO JSON parsing, transforms and
data-module helpers.

A task's own readers, data module, transforms and demo set live in ``b4transfer.tasks.<name>.data``.
"""

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
    "scan_folder",
    "stratified_split",
]
