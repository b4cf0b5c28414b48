"""``mode=distill``: train a student (``distill.student``, else ``model.name``) on the data with a teacher's
soft targets (``distill.teacher``: a run directory, a checkpoint or an export of this library), and
optionally on the unlabelled images the teacher is sure of (``distill.unlabeled``).

It is a ``mode=train`` run of the student — the same checks, data, schedule, EMA, checkpoints, calibration,
error analysis and exports (the model card names the teacher) — whose task is asked for a distillation
(:meth:`b4transfer.tasks.base.Task.distillation`): the student module with the distillation loss, the
training split with the pseudo-labels, the datamodule (cached teacher logits where the images allow).
Everything that cannot work is refused before training: a task without distillation (detection), a
teacher of another task or with other classes, a student timm cannot build, a missing or empty
unlabelled folder, ``data.cache_features`` and resuming (``ckpt_path``).
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, open_dict

from b4transfer import tasks
from b4transfer.config import plain
from b4transfer.distill.settings import DistillSettings
from b4transfer.distill.teacher import describe_teacher
from b4transfer.errors import UserError
from b4transfer.modes.train import train
from b4transfer.tasks.base import Task

__all__ = ["distill"]


def _as_train(cfg: DictConfig) -> DictConfig:
    """``cfg`` as the task reads a training run (its ``mode=train`` checks and builders)."""
    view = copy.deepcopy(cfg)
    with open_dict(view):
        view.mode = "train"
    return view


def student_config(cfg: DictConfig, settings: DistillSettings) -> DictConfig:
    """``cfg`` with ``model.name`` set to ``distill.student`` (when given)."""
    out = copy.deepcopy(cfg)
    if settings.student:
        with open_dict(out):
            out.model.name = settings.student
    return out


def _check(cfg: DictConfig, task: Task) -> None:
    if cfg.get("ckpt_path"):
        raise UserError(
            f"mode=distill starts a new student and does not resume ckpt_path={cfg.ckpt_path}; the teacher "
            "is distill.teacher. Fix: drop ckpt_path."
        )
    if cfg.data.get("cache_features"):
        raise UserError(
            "data.cache_features=true trains a head on frozen features, which mode=distill does not do (the "
            "student's backbone learns from the teacher). Fix: set data.cache_features=false."
        )
    task.refuse("mode", "distill", task.modes)


def distilling_task(task: Task, distillation: Any) -> Task:
    """``task`` whose module, training data and summary are those of ``distillation``."""
    base = type(task)

    class Distilling(base):
        def check_config(self, cfg: DictConfig) -> None:
            base.check_config(self, _as_train(cfg))

        def build_backbone(self, cfg: DictConfig):
            try:
                return base.build_backbone(self, cfg)
            except (RuntimeError, TypeError, NotImplementedError) as err:  # timm cannot build it so
                first = (str(err).splitlines() or [""])[0]
                raise UserError(
                    f"distill.student={cfg.model.name!r}: timm cannot build it for task={task.name} "
                    f"({type(err).__name__}: {first}). Fix: pick another student, e.g. tf_efficientnet_lite0."
                ) from err

        def build_module(self, cfg: DictConfig, splits: Any, backbone=None):
            module = base.build_module(self, _as_train(cfg), splits, backbone)
            return distillation.student(cfg, splits, module)

        def build_datamodule(self, cfg: DictConfig, splits: Any, module):
            splits = distillation.training_splits(cfg, splits)
            images = base.build_datamodule(self, _as_train(cfg), splits, module)
            return distillation.datamodule(images, module)

        def summary(self, splits: Any, datamodule) -> dict[str, Any]:
            images = getattr(datamodule, "images", datamodule)
            return {**base.summary(self, splits, images), "distillation": distillation.report(datamodule)}

    Distilling.__name__ = Distilling.__qualname__ = f"Distilling{base.__name__}"
    return Distilling()


def distill(cfg: DictConfig) -> dict[str, Any]:
    """``mode=distill``: the student's training summary, with ``distillation`` (teacher, alpha, T,
    pseudo-labels)."""
    task = tasks.from_config(cfg)
    _check(cfg, task)
    settings = DistillSettings.from_config(plain(cfg.get("distill")))
    spec = describe_teacher(settings.teacher)
    if tasks.get(spec.task) is not task:
        raise UserError(
            f"distill.teacher={str(spec.path)!r} is a task={spec.task} model, but this run is "
            f"task={task.name}. Fix: pass a task={task.name} teacher, or run task={spec.task} with its data."
        )
    return train(student_config(cfg, settings), task=distilling_task(task, task.distillation(spec, settings)))
