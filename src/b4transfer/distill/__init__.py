"""Knowledge distillation (``mode=distill``): the settings, the teacher, the loss.

What the task does with them (the student module, pseudo-labels, cached teacher logits) lives in the task's
package (``tasks/classification/distill.py``); the mode itself in :mod:`b4transfer.modes.distill`.
"""

from b4transfer.distill.loss import hinton_loss, soft_target_loss
from b4transfer.distill.settings import DistillSettings, check_student, list_unlabeled
from b4transfer.distill.teacher import Teacher, TeacherSpec, class_order, describe_teacher, load_teacher

__all__ = [
    "DistillSettings", "Teacher", "TeacherSpec", "check_student", "class_order", "describe_teacher",
    "hinton_loss", "list_unlabeled", "load_teacher", "soft_target_loss",
]
