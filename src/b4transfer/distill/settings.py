"""The ``distill.*`` settings of ``mode=distill``, checked before anything is built."""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from timm.models import is_model, split_model_name_tag

from b4transfer import settings as schema
from b4transfer.data.images import IMG_EXTENSIONS, images_under
from b4transfer.errors import UserError, UserFileNotFoundError

__all__ = ["DistillSettings", "check_student", "list_unlabeled"]


@dataclass(frozen=True)
class DistillSettings:
    """``distill.*`` checked (types by :class:`b4transfer.settings.DistillSettings`, the defaults those of
    ``conf/config.yaml``; ranges and paths here)."""

    teacher: str
    student: str | None
    alpha: float
    temperature: float
    unlabeled: str | None
    pseudo_threshold: float

    @classmethod
    def from_config(cls, distill: dict[str, Any] | None) -> DistillSettings:
        """The checked settings; a :class:`UserError` naming the key, the value and the fix otherwise."""
        typed = schema.DistillSettings.of(distill, key="distill")  # keys not given: conf/config.yaml's
        if not typed.teacher:
            raise UserError(
                "mode=distill needs a teacher: pass distill.teacher=PATH (a run directory, a .ckpt or a timm "
                "export folder written by b4transfer for this task and these classes)."
            )
        alpha, threshold, temperature = typed.alpha, typed.pseudo_threshold, typed.temperature
        _number("distill.alpha", alpha, 0.0, 1.0, "e.g. distill.alpha=0.5 (1: soft targets only)")
        _number("distill.pseudo_threshold", threshold, 0.0, 1.0, "e.g. distill.pseudo_threshold=0.9")
        if temperature <= 0:
            raise UserError(f"distill.temperature must be a number > 0, got {temperature!r}. Fix: e.g. 4.0.")
        if typed.student is not None:
            check_student(typed.student)
        if typed.unlabeled not in (None, ""):
            list_unlabeled(typed.unlabeled)  # missing or empty: refused now
        return cls(
            teacher=str(typed.teacher),
            student=typed.student,
            alpha=alpha,
            temperature=temperature,
            unlabeled=str(typed.unlabeled) if typed.unlabeled not in (None, "") else None,
            pseudo_threshold=threshold,
        )


def _bad(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, numbers.Real)


def _number(key: str, value: Any, low: float, high: float, fix: str) -> None:
    if _bad(value) or not low <= value <= high:
        raise UserError(f"{key} must be a number in [{low:g}, {high:g}], got {value!r}. Fix: {fix}.")


def check_student(name: Any) -> None:
    """Refuse a student name timm does not know, naming the closest timm model names."""
    if not isinstance(name, str) or not name:
        raise UserError(
            f"distill.student must be a timm model name such as 'tf_efficientnet_lite0', got {name!r}."
        )
    arch = split_model_name_tag(name)[0]
    if not is_model(arch):
        models = timm.list_models()
        close = difflib.get_close_matches(arch, models, n=5, cutoff=0.6) or timm.list_models(f"*{arch}*")[:5]
        hint = f"Close timm names: {', '.join(close)}." if close else "timm.list_models() lists them."
        raise UserError(f"distill.student={name!r} is not a timm model. {hint} Fix: pass one of those.")


def list_unlabeled(folder: Any) -> list[Path]:
    """Every image under ``distill.unlabeled`` (recursively, sorted); refused when missing or empty."""
    path = Path(str(folder)).expanduser()
    if not path.is_dir():
        raise UserFileNotFoundError(
            f"distill.unlabeled={str(folder)!r} is not a folder. Fix: pass a folder of unlabelled images, or "
            "distill.unlabeled=null."
        )
    images = images_under(path)
    if not images:
        raise UserError(
            f"distill.unlabeled={str(folder)!r} holds no images ({', '.join(IMG_EXTENSIONS)}). Fix: put the "
            "unlabelled images there, or set distill.unlabeled=null."
        )
    return images
