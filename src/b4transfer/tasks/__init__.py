"""The task registry: ``task=`` name -> :class:`~b4transfer.tasks.base.Task`.

The built-in tasks are imported on first use; a plug-in registers itself with :func:`register`::

    from b4transfer import tasks
    tasks.register(MyTask())          # then task=my_task (conf/task/my_task.yaml, or a ConfigStore node)
"""

from __future__ import annotations

import codecs
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from b4transfer.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from b4transfer.tasks.base import Task, TaskModule

__all__ = ["DEFAULT", "Task", "TaskModule", "for_splits", "from_config", "get", "load_module", "names",
           "read_checkpoint", "register", "unregister"]

DEFAULT = "classification"
_BUILTIN = {
    "classification": "b4transfer.tasks.classification",
    "detection": "b4transfer.tasks.detection",
    "segmentation": "b4transfer.tasks.segmentation",
}
_REGISTRY: dict[str, Task] = {}


def __getattr__(name: str) -> Any:
    """``Task`` and ``TaskModule`` on first use: listing the task names (``--help``) imports no torch."""
    if name in ("Task", "TaskModule"):
        from b4transfer.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(task: Task) -> Task:
    """Make ``task`` available as ``task=<task.name>`` (a later registration of a name replaces it)."""
    if not task.name or not isinstance(task.name, str):
        raise UserError(f"a Task needs a name (the task= value), got {task.name!r}.")
    _REGISTRY[task.name] = task
    return task


def unregister(name: str) -> None:
    """Forget the plug-in task ``name`` (e.g. at the end of a test); built-in tasks stay available."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """Every known task name."""
    return sorted({*_BUILTIN, *_REGISTRY})


def get(name: str | None) -> Task:
    """The task registered as ``name`` (``None``: the default task)."""
    name = name or DEFAULT
    if name not in _REGISTRY and name in _BUILTIN:
        register(importlib.import_module(_BUILTIN[name]).TASK)
    if name not in _REGISTRY:
        raise UserError(f"task={name!r} is not a task; choose one of {', '.join(names())}.")
    return _REGISTRY[name]


def from_config(cfg: DictConfig) -> Task:
    """The task a config selects (``cfg.task``)."""
    return get(cfg.get("task"))


def for_splits(splits: Any) -> Task | None:
    """The task whose data sources give data like ``splits``, if any."""
    for name in names():
        if isinstance(splits, get(name).splits_type):
            return get(name)
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A b4transfer checkpoint as a dict (tensors and plain containers only: never arbitrary pickle).

    Raises:
        UserError: ``path`` is missing, unreadable, or not a checkpoint written by b4transfer.
    """
    import torch

    from b4transfer.errors import UserFileNotFoundError

    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(
            f"ckpt_path={str(path)!r} does not exist. Pass the path of a .ckpt written by a training run, "
            "e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:  # mmap needs the zip format; an older torch.save format is read whole
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(
                f"ckpt_path={str(path)!r} is not a checkpoint ({_what_file(path, err)}). {_A_CHECKPOINT}"
            ) from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hparams or "class_names" not in hparams or "state_dict" not in ckpt:
        raise UserError(
            f"ckpt_path={str(path)!r} is not a b4transfer checkpoint (a PyTorch file, but without the "
            f"state_dict and class_names a training run stores). {_A_CHECKPOINT}"
        )
    return ckpt


_A_CHECKPOINT = (
    "A checkpoint is the .ckpt file `mode=train` writes into <run dir>/checkpoints/ (last.ckpt, "
    "best-epochNNN.ckpt). Fix: pass one, e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt."
)


def _what_file(path: Path, err: BaseException) -> str:
    """What ``path`` is, in a few words, for the message refusing it as a checkpoint."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty"
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"\0" not in head:
        try:  # incremental: a character cut at the end of the first 4 kB is no reason to doubt
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
            return f"it is a {size}-byte text file"
        except UnicodeDecodeError:
            pass
    if "Unsupported global" in str(err):  # torch's weights_only unpickler met a class
        return (
            "it holds pickled Python objects besides tensors and plain containers, which b4transfer does "
            "not load (unpickling them could run any code)"
        )
    if head.startswith(b"PK"):
        return "it is a zip archive, but not one torch.save wrote"
    return (
        f"torch.load(weights_only=True) cannot read its {size} bytes ({type(err).__name__}): not tensors and "
        "plain containers saved by torch.save"
    )


def load_module(ckpt_path: str | Path) -> TaskModule:
    """Rebuild a task's module from a checkpoint, with no network and no config (in eval mode)."""
    ckpt = read_checkpoint(ckpt_path)
    hparams = dict(ckpt["hyper_parameters"])
    return get(hparams.get("task")).load_module(hparams, ckpt["state_dict"])
