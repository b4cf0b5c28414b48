"""One typed source of settings: dataclass schemas of every config group, checked once after composition.

:func:`validate` checks the composed config of a run (the command line's and the Python API's, right after
Hydra composed it: :func:`b4transfer.compose.compose_config`, :mod:`b4transfer.cli.main`) against its task's
schema and returns the typed settings; a value of the wrong type or a key the task does not have is one line
naming the key, the value and the fix, before any data is read. The builders take the typed groups
(:meth:`~b4transfer.settings.schema.Schema.of`: a config node, or a checkpoint's plain hyper-parameters).

Every default is written once, in ``conf/``: a schema field holds the type, and no default where the YAML
holds one (``tests/test_schema.py`` holds the schema and the YAML to the same keys).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from b4transfer.errors import NotSupportedError, UserError, UserTypeError
from b4transfer.settings.data import DataSettings, DenseDataSettings
from b4transfer.settings.model import ModelSettings
from b4transfer.settings.outputs import DistillSettings, ExportSettings
from b4transfer.settings.run import PluginSettings, RunSettings
from b4transfer.settings.schema import MISSING, Schema, absent, dotted_fields, field_type, given
from b4transfer.settings.training import EmaSettings, OptimSettings, SchedulerSettings

# The other groups' schemas: b4transfer.settings.training (trainer, strategy, finetune, checkpoint, ...) and
# b4transfer.settings.outputs (predict, push, calibrate, errors, audit).
__all__ = [
    "MISSING", "DataSettings", "DenseDataSettings", "DistillSettings", "EmaSettings",
    "ExportSettings", "ModelSettings", "OptimSettings", "PluginSettings", "RunSettings", "SchedulerSettings",
    "Schema", "absent", "dotted_fields", "field_type", "given", "given_keys", "schema_of", "takes_new_keys",
    "validate",
]


_GIVEN = "_b4transfer_given"


def schema_of(task_name: str | None) -> type[RunSettings]:
    """The schema of ``task=<task_name>``'s config (:attr:`Task.schema`)."""
    from b4transfer import tasks

    return tasks.get(task_name).schema


def validate(cfg: DictConfig | dict, overrides: Sequence[str] | None = None) -> RunSettings:
    """Check the composed config ``cfg`` against its task's schema; the typed settings. ``overrides``: the
    ``key=value`` arguments it was composed with, remembered on ``cfg`` (:func:`given_keys`).

    Raises:
        UserError: One line naming the key, the value given and the fix: a value of the wrong type, a key
            no task has (with the closest keys), or a key of another task (``NotSupportedError``).
    """
    if overrides is not None and isinstance(cfg, DictConfig):
        keys = frozenset(o.partition("=")[0].lstrip("+~") for o in overrides)
        object.__setattr__(cfg, _GIVEN, keys)  # an attribute of this object, not a config key
    tree = cfg if isinstance(cfg, dict) else _container(cfg)
    tree = {k: v for k, v in tree.items() if k != "hydra"}  # Hydra's own node, when it is still there
    task = tree.get("task")
    schema = schema_of(task)
    data = tree.pop("data", None)
    unknown = functools.partial(_unknown, schema, task)
    settings = schema.of(tree, key="", unknown=unknown, fill=False)
    settings.data = _data(schema, task, data)
    return settings


def _data(schema: type, task: str | None, data: Any) -> Any:
    """``data`` typed by the task's data schema, or else by another task's that takes all its keys: the
    data of another task is refused with its fix when it is read (``task=detection data=folder``: "use
    data=coco"), and a checkpoint mode takes its task from the checkpoint, not from ``task=``."""
    from b4transfer import tasks

    own = field_type(schema, "data")
    if data is None or not (isinstance(own, type) and issubclass(own, Schema)):
        return data
    try:
        return own.of(data, key="data", unknown=functools.partial(_unknown, schema, task), fill=False)
    except UserTypeError:
        raise
    except UserError as refused:  # an unknown key: is it another task's data?
        for name in tasks.names():
            other = field_type(schema_of(name), "data") if name != task and _loads(name) else None
            if isinstance(other, type) and issubclass(other, Schema) and other is not own:
                try:
                    return other.of(data, key="data", fill=False)
                except UserError:
                    continue
        raise refused from None


def given_keys(cfg: DictConfig) -> frozenset[str] | None:
    """The keys (and group choices) given when ``cfg`` was composed, on the command line or to the Python
    API (:func:`validate`'s ``overrides``); ``None``: not known (a config composed some other way)."""
    return getattr(cfg, _GIVEN, None)


def takes_new_keys(key: str) -> bool:
    """Whether the node holding the dotted ``key`` takes keys it does not declare (an open schema such as
    ``trainer`` or ``optim``, whose keys go on to a library; ``callbacks``, ``logger``, ``data.source``), so
    that ``+key=value`` adds one. Judged on the keys every task shares (no task is imported)."""
    parent = key.rpartition(".")[0]
    if not parent:
        return False
    kind = field_type(RunSettings, parent)
    if isinstance(kind, type) and issubclass(kind, Schema):
        return kind.OPEN
    return kind is not None or parent.startswith(("data.source", "head.detector_kwargs"))


def _container(cfg: DictConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


def _unknown(schema: type, task: str | None, key: str, value: Any) -> UserError:
    """A key of another task (``loss.name`` with ``task=detection``) names that task; any other unknown key
    the closest keys of this one. A whole node (``loss``) is told by its first key (``loss.name``)."""
    from b4transfer import tasks
    from b4transfer.settings.schema import unknown_key_error

    while isinstance(value, dict) and value:
        name, value = next(iter(value.items()))
        key = f"{key}.{name}"
    owners = [name for name in tasks.names() if name != task and _declares(name, key)]
    if owners:
        shown = str(value).lower() if isinstance(value, bool) else value
        choose = " or ".join(f"task={o}" for o in owners)
        return NotSupportedError(
            f"task={task} does not support {key}={shown} ({key} is a setting of {choose}). "
            f"Fix: drop {key}, or choose {choose}"
        )
    return unknown_key_error(key, value, list(dotted_fields(schema)))


def _loads(task: str) -> bool:
    """Whether ``task``'s code imports (a plug-in that cannot load declares nothing)."""
    from b4transfer import tasks

    try:
        tasks.get(task)
    except Exception:  # noqa: BLE001
        return False
    return True


def _declares(task: str, key: str) -> bool:
    schema = schema_of(task) if _loads(task) else PluginSettings
    return schema is not PluginSettings and field_type(schema, key) is not None
