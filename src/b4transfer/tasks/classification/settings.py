"""The schema of ``task=classification``'s config: its ``data`` (``conf/data/_common.yaml`` and the folder,
csv and demo sources), ``head`` and ``loss`` (``conf/task/classification.yaml``)."""

from dataclasses import dataclass
from typing import Any

from b4transfer.settings import DataSettings, RunSettings, Schema, given


@dataclass
class AugmentSettings(Schema):
    """``data.augment``: timm ``create_transform`` training options (others go on to timm)."""

    OPEN = True

    hflip: float = given()
    scale: list[float] = given()
    color_jitter: float | None = given()
    auto_augment: str | None = given()  # e.g. rand-m9-mstd0.5
    re_prob: float = given()  # random erasing
    re_mode: str | None = given()  # random erasing fill (experiment=ra2: pixel)

    # timm data-config keys (the model's input size, interpolation, mean/std and crop) and the split's mode
    RESERVED = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "is_training")
    RESERVED_FIX = {
        "input_size": "set data.image_size",
        "crop_pct": "set data.crop_pct",
        "interpolation": "set data.interpolation",
        "mean": "set data.mean",
        "std": "set data.std",
        "crop_mode": "the model's timm data config sets it",
        "is_training": "data.augment is the training split's; evaluation is never augmented",
    }

    def receivers(self):
        from timm.data import create_transform

        return "timm.data.create_transform", [create_transform]


@dataclass
class MixupSettings(Schema):
    """``data.mixup``: timm MixupSettings / CutMix on training batches."""

    mixup_alpha: float = given()
    cutmix_alpha: float = given()
    prob: float = given()
    switch_prob: float = given()
    mode: str = given()  # batch | pair | elem


@dataclass
class ClassificationDataSettings(DataSettings):
    """Image-level labels: a folder of class folders, a CSV, or the generated demo."""

    eval_image_size: int | None = given()
    crop_pct: float | None = given()
    eval_crop_pct: float | None = given()
    interpolation: str | None = given()
    draft_factor: float | None = given()
    conflicting_labels: str = given()  # error | keep
    cache_features: bool = given()
    augment: Any = given(schema=AugmentSettings, **{"or": (False,), "or_type": "false or a mapping"})
    mixup: MixupSettings = given()
    csv: str | None = given()  # data=csv
    path_column: str | None = given()
    label_column: str | None = given()
    split_column: str | None = given()
    multi_label: bool | None = given()
    label_delimiter: str | None = given()
    class_names: list[str] | None = given()


@dataclass
class ClassificationHeadSettings(Schema):
    """``head``: pooled features -> dropout -> linear."""

    label_smoothing: float = given()


@dataclass
class ClassificationLossSettings(Schema):
    """``loss``: cross-entropy or focal, with optional class weights."""

    name: str = given()  # ce | focal
    gamma: float = given()
    class_weights: Any = given()  # null | auto | effective | [w1, w2, ...]


@dataclass
class ClassificationSettings(RunSettings):
    """``task=classification``."""

    data: ClassificationDataSettings = given()
    head: ClassificationHeadSettings = given()
    loss: ClassificationLossSettings = given()
