"""``data``: what every task's data sources share (``conf/data/*.yaml``). A task's schema adds its own keys
(``tasks/<name>/settings.py``)."""

from dataclasses import dataclass
from typing import Any

from b4transfer.settings.schema import Schema, given


@dataclass
class DataSettings(Schema):
    """The keys of every data source: the reader, the loader, the k-fold split, the input size."""

    source: dict[str, Any] = given()  # the reader: _target_ and its arguments (hydra.utils.instantiate)
    batch_size: int = given()  # per device
    num_workers: int | None = given()  # null: one less than the CPU count
    kfold: int | None = given()
    fold: int | None = given()
    image_size: int | None = given()  # train size (or the canvas side of the dense tasks)
    mean: list[float] | None = given()
    std: list[float] | None = given()
    sampler: str | None = given()
    root: str | None = given()  # folder, coco, yolo and mask sources: where the data lives
    val_fraction: float | None = given()  # share of train held out when the data has no validation split
    on_bad_image: str | None = given()  # skip | error


@dataclass
class CocoFiles(Schema):
    """``data=coco``'s explicit files (override what ``data.root`` finds)."""

    train_json: str | None = given()
    train_images: str | None = given()
    val_json: str | None = given()
    val_images: str | None = given()
    test_json: str | None = given()
    test_images: str | None = given()


@dataclass
class DenseAugment(Schema):
    """``data.augment`` of the tasks that letterbox their images onto a canvas (boxes or masks follow)."""

    hflip: float = given()  # horizontal flip probability
    scale: list[float] = given()  # [low, high] scale jitter; [1, 1]: off
    color_jitter: float = given()  # 0: off


@dataclass
class DenseDataSettings(DataSettings, CocoFiles):
    """The data of the tasks that letterbox their images onto a canvas (boxes or masks follow): every
    source's keys, ``data=coco``'s files, and their augment."""

    augment: DenseAugment = given()
