"""What a run writes besides checkpoints: ``predict``, ``export``, ``push``, ``calibrate``, ``errors``,
``audit`` and ``distill``."""

from dataclasses import dataclass
from typing import Any

from b4transfer.settings.schema import Schema, given


@dataclass
class PredictSettings(Schema):
    """``mode=predict|embed`` (every task's keys: a checkpoint mode takes its task from the checkpoint)."""

    input: str | None = given()
    batch_size: int | None = given()
    top_k: int = given()
    precision: str = given()  # auto | bf16 | 32
    channels_last: bool = given()
    compile: bool = given()
    check_agreement: int = given()
    runtime: str = given()  # torch | auto | onnxruntime | openvino | onnx_int8
    draw: bool = given()
    draw_score_thresh: float = given()
    coco_json: str | None = given()
    slice: int | None = given()  # tile side in pixels
    slice_overlap: float = given()
    explain: bool = given()
    explain_method: str = given()
    explain_stride: int = given()


@dataclass
class ExportSettings(Schema):
    """``export.*``: the formats written after training or by ``mode=export``."""

    DEFAULTS = ("config.yaml", "export")

    format: Any = given()  # a format name or a list of them
    onnx_opset: int = given()
    parity: bool | None = given()
    parity_tolerance: float = given()
    int8_calibration_images: int = given()
    backbone: bool = given()
    card: bool | None = given()
    license: str = given()

    def formats(self) -> list[str]:
        """``format`` as a list (a single name, or a list of names)."""
        return [self.format] if isinstance(self.format, str) else list(self.format or [])


@dataclass
class PushSettings(Schema):
    """``mode=push``: upload an export folder to the Hugging Face Hub."""

    repo_id: str | None = given()
    dir: str | None = given()
    private: bool = given()
    commit_message: str = given()
    timeout: float = given()


@dataclass
class StepSettings(Schema):
    """A step after training, on the validation split (:data:`b4transfer.tasks.base.STEPS`)."""

    enabled: bool | None = given()  # null: where the task implements it (its Task.steps)


@dataclass
class CalibrateSettings(StepSettings):
    """Calibration after training, on the validation split."""

    bins: int = given()


@dataclass
class ErrorsSettings(StepSettings):
    """Error analysis after training, on the validation split."""

    gallery: int = given()


@dataclass
class AuditSettings(Schema):
    """``mode=audit`` and the quick audit before each training run."""

    on_train: bool = given()
    leakage: str = given()  # warn | error
    hash_distance: int | None = given()
    near_duplicate_threshold: float | None = given()
    label_issues: bool = given()
    label_issue_cutoff: float = given()
    folds: int = given()
    thumbnails: int = given()


@dataclass
class DistillSettings(Schema):
    """``mode=distill``: a student trained on a teacher's soft targets."""

    teacher: str | None = given()
    student: str | None = given()
    alpha: float = given()
    temperature: float = given()
    unlabeled: str | None = given()
    pseudo_threshold: float = given()
