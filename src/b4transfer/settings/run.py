"""The whole config of a run: :class:`RunSettings` holds the keys every task shares; a task's schema
(``tasks/<name>/settings.py``, :attr:`b4transfer.tasks.base.Task.schema`) adds its ``data``, ``head`` and
``loss``. :class:`PluginSettings` serves a task that declares none: its own keys pass unchecked."""

from dataclasses import dataclass
from typing import Any

from b4transfer.settings.model import ModelSettings
from b4transfer.settings.outputs import (
    AuditSettings,
    CalibrateSettings,
    DistillSettings,
    ErrorsSettings,
    ExportSettings,
    PredictSettings,
    PushSettings,
)
from b4transfer.settings.schema import Schema, absent, given
from b4transfer.settings.training import (
    CheckpointSettings,
    EarlyStoppingSettings,
    EmaSettings,
    FinetuneSettings,
    LrFindSettings,
    OptimSettings,
    SchedulerSettings,
    StrategySettings,
    TrainerSettings,
)


@dataclass
class RunSettings(Schema):
    """``conf/config.yaml`` and the groups it composes, but the task's own ``data``, ``head`` and ``loss``."""

    task: str = given()
    mode: str = given()
    seed: int | None = given()
    seeds: list[int] | None = given()
    ckpt_path: str | None = given()
    optimized_metric: str | None = given()
    num_classes: int | None = given()
    run_dir: str = given()
    tta: str | None = given()
    model: ModelSettings = given()
    optim: OptimSettings = given()
    scheduler: SchedulerSettings = given()
    finetune: FinetuneSettings | None = given()  # ~finetune: no schedule callback
    ema: EmaSettings = given()
    trainer: TrainerSettings = given()
    strategy: StrategySettings = given()
    logger: dict[str, Any] = given()  # name -> a logger to instantiate
    checkpoint: CheckpointSettings = given()
    early_stopping: EarlyStoppingSettings = given()
    lr_find: LrFindSettings = given()
    predict: PredictSettings = given()
    export: ExportSettings = given()
    push: PushSettings = given()
    calibrate: CalibrateSettings = given()
    errors: ErrorsSettings = given()
    audit: AuditSettings = given()
    distill: DistillSettings = given()
    callbacks: dict[str, Any] | None = absent()  # +callbacks.NAME._target_=...: Lightning callbacks of yours


@dataclass
class PluginSettings(RunSettings):
    """A task that declares no schema: the shared keys checked, its own (``data``, ``head``, ...) passed."""

    OPEN = True

    data: Any = given()
