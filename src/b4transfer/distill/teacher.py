"""The teacher of ``mode=distill``: a run directory, a checkpoint or a timm export folder of b4transfer.

A run directory gives its best checkpoint (``summary.json``), else its ``export/`` folder. A checkpoint is
rebuilt with :func:`b4transfer.tasks.load_module`; a timm export folder (``config.json`` +
``model.safetensors``, a classifier) with
:func:`b4transfer.export.timm_format.load_exported`. What it was trained
for (task, classes) is read before the weights, so a teacher that cannot teach this run is refused first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from b4transfer.errors import UserError, UserFileNotFoundError

__all__ = ["Teacher", "TeacherSpec", "class_order", "describe_teacher", "load_teacher"]

_FIX = "pass a run directory, a .ckpt or a timm export folder (config.json + model.safetensors) of b4transfer"


@dataclass(frozen=True)
class TeacherSpec:
    """What a teacher file says about itself, read without building the model."""

    path: Path  # the .ckpt or the export folder
    kind: str  # checkpoint | export
    task: str
    class_names: list[str]
    model_name: str


@dataclass
class Teacher:
    """A loaded teacher: ``model`` maps images prepared with ``data_config`` to logits (eval mode)."""

    spec: TeacherSpec
    model: nn.Module
    data_config: dict[str, Any]  # eval: input_size, mean, std (checkpoint: the module's eval config)
    temperature: float = 1.0  # its calibration temperature (for the pseudo-labels' confidence)
    module: Any = field(default=None, repr=False)  # the task's module, when it came from a checkpoint


def _from_run_dir(path: Path) -> Path:
    summary = path / "summary.json"
    if summary.is_file():
        best = json.loads(summary.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    for folder in (path / "export", path):
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise UserError(
        f"distill.teacher={str(path)!r} holds no best checkpoint (summary.json) and no timm export "
        f"(config.json + model.safetensors). Fix: {_FIX}."
    )


def describe_teacher(spec: str | Path) -> TeacherSpec:
    """Read the teacher's task, classes and model name (no weights built)."""
    from b4transfer import tasks

    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise UserFileNotFoundError(f"distill.teacher={str(spec)!r} does not exist. Fix: {_FIX}.")
    if path.is_dir():
        path = _from_run_dir(path)
    if path.is_file():
        if path.suffix.lower() in (".onnx", ".xml", ".bin", ".safetensors", ".json"):
            raise UserError(
                f"distill.teacher={str(spec)!r} is a {path.suffix} file; a teacher is loaded from its "
                f"checkpoint or the timm export folder around it. Fix: {_FIX}."
            )
        hparams = tasks.read_checkpoint(path)["hyper_parameters"]
        task = hparams.get("task") or tasks.DEFAULT
        return TeacherSpec(path, "checkpoint", task, list(hparams["class_names"]), hparams["model"]["name"])
    config = json.loads((path / "config.json").read_text())
    from b4transfer.export.timm_format import MARKER

    if MARKER not in config:
        raise UserError(
            f"distill.teacher={str(spec)!r}: {path / 'config.json'} was not written by b4transfer. "
            f"Fix: {_FIX}."
        )
    names = config.get("label_names") or config.get("class_names") or []
    task = config.get("task") or tasks.DEFAULT  # classification exports are plain timm: no task key
    return TeacherSpec(path, "export", task, list(names), str(config.get("architecture")))


def load_teacher(spec: TeacherSpec) -> Teacher:
    """Build the teacher ``spec`` describes, in eval mode (a checkpoint's task rebuilds its own module)."""
    from b4transfer import tasks

    if spec.kind == "checkpoint":
        module = tasks.load_module(spec.path)
        temperature = float(getattr(getattr(module, "head", None), "temperature", 1.0) or 1.0)
        return Teacher(spec, module, dict(module.data_config["eval"]), temperature, module=module)
    import timm

    from b4transfer.export.timm_format import load_exported

    model = load_exported(spec.path)
    config = json.loads((spec.path / "config.json").read_text())
    data = timm.data.resolve_data_config({}, model=model, use_test_size=True)
    temperature = float((config.get("calibration") or {}).get("temperature", 1.0))
    return Teacher(spec, model, dict(data), temperature)


def class_order(spec: TeacherSpec, class_names: list[str]) -> list[int] | None:
    """For each of the data's classes, the teacher's output index (``None``: the same order); refuses a
    teacher with other classes than the data."""
    theirs, ours = list(spec.class_names), list(class_names)
    if theirs == ours:
        return None
    if sorted(theirs) != sorted(ours):
        missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        raise UserError(
            f"distill.teacher={str(spec.path)!r} was trained on {len(theirs)} classes, the data holds "
            f"{len(ours)}: missing in the teacher: {', '.join(missing[:10]) or 'none'}; not in the data: "
            f"{', '.join(extra[:10]) or 'none'}. Fix: pass a teacher trained on these classes, or the data "
            "it was trained on."
        )
    return [theirs.index(name) for name in ours]
