"""What every task's distillation shares: the teacher held outside the student, the student built from the
module a plain training run would train, and the summary's report.

A task subclasses :class:`Distillation` with its ``student_class`` (its module with a distilling
``training_step``, taking ``distill=`` and the module's own arguments) and :meth:`Distillation.view` (the
teacher's logits for the student's batch); :meth:`Distillation.training_splits` and
:meth:`Distillation.datamodule` may add pseudo-labels and cached teacher logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from b4transfer.distill.settings import DistillSettings
from b4transfer.distill.teacher import Teacher, TeacherSpec, class_order, load_teacher

__all__ = ["Distillation", "DistilledStudent", "SharedTeacher"]


class SharedTeacher:
    """Holds the teacher outside the student: no submodule (so not in its state dict, optimizer or
    export), and the same object in a deep copy (the EMA's averaged copy holds no second teacher)."""

    def __init__(self, value: nn.Module | None = None) -> None:
        self.value = value

    def __deepcopy__(self, memo):
        return self


class DistilledStudent:
    """Mixed in before a task's LightningModule: the Hinton settings and the shared teacher, moved to the
    student's device when fitting starts. The task's module supplies ``training_step``.

    Args:
        distill: ``alpha``, ``temperature`` and, for the record, ``teacher`` (its path).
        **kwargs: The task module's arguments.
    """

    def __init__(self, *, distill: dict[str, Any], **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha, self.temperature = float(distill["alpha"]), float(distill["temperature"])
        self.teacher = SharedTeacher()  # set by the distillation

    def on_fit_start(self) -> None:
        if self.teacher.value is not None:
            self.teacher.value.to(self.device).eval()


class Distillation:
    """``mode=distill`` for one task (see :meth:`b4transfer.tasks.base.Task.distillation`).

    Args:
        spec: The teacher, as :func:`b4transfer.distill.teacher.describe_teacher` read it.
        settings: The checked ``distill.*`` settings.
    """

    student_class: ClassVar[type] = nn.Module

    def __init__(self, spec: TeacherSpec, settings: DistillSettings) -> None:
        self.spec, self.settings = spec, settings
        self.teacher: Teacher | None = None
        self.order: list[int] | None = None

    def view(self, teacher: Teacher, student) -> nn.Module:
        """The teacher's logits (in the data's class order, ``self.order``) for the student's batch."""
        raise NotImplementedError

    def student(self, cfg, splits: Any, module):
        """``module`` (built for ``splits`` as a training run builds it) as a student of the teacher, with
        the same weights; refuses a teacher with other classes than the data."""
        self.order = class_order(self.spec, splits.class_names)
        accepted = type(module).init_arguments()
        kwargs = {k: v for k, v in module.hparams.items() if k in accepted and k != "backbone"}
        settings = {"alpha": self.settings.alpha, "temperature": self.settings.temperature,
                    "teacher": str(self.spec.path)}
        # the seeded random stream stays as a plain training run's: the student starts from ``module``'s
        # weights (the same as mode=train with this seed), whatever the teacher and its loading draw
        with torch.random.fork_rng(devices=[]):
            self.teacher = self.teacher or load_teacher(self.spec)
            student = self.student_class(distill=settings, backbone=module.backbone, **kwargs)
        student.load_state_dict(module.state_dict())
        student.teacher = SharedTeacher(self.view(self.teacher, student))
        return student

    def training_splits(self, cfg, splits: Any) -> Any:
        """The training data (a task may add pseudo-labelled images)."""
        return splits

    def datamodule(self, datamodule, student):
        """The datamodule to train with (a task may cache the teacher's logits)."""
        return datamodule

    def report(self, datamodule) -> dict[str, Any]:
        """The summary's ``distillation`` entry."""
        return {
            "teacher": str(self.spec.path),
            "teacher_model": self.spec.model_name,
            "teacher_kind": self.spec.kind,
            "alpha": self.settings.alpha,
            "temperature": self.settings.temperature,
            "teacher_logits": "on the fly" if self.settings.alpha > 0 else "unused",
            "class_order_remapped": self.order is not None,
            "pseudo_labels": None,
        }
