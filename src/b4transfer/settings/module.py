"""A task module's settings, typed: what its checkpoint's ``hyper_parameters`` hold (plain dicts, so old
checkpoints load as they were written), read through the schemas once when the module is built."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from b4transfer.settings.model import ModelSettings
from b4transfer.settings.run import RunSettings
from b4transfer.settings.schema import Schema, field_type


@dataclass
class ModuleSettings:
    """The typed ``model``, ``head``, ``loss`` and ``data`` of a module (``None``: not given; a module built
    from Python may pass part of them). ``optim`` and ``scheduler`` are typed when the optimizer is built
    (:func:`b4transfer.training.optim.configure`): training may still change them (``lr_scaling``)."""

    model: ModelSettings
    head: Any
    loss: Any
    data: Any

    @classmethod
    def of(cls, hparams: Mapping[str, Any], schema: type[RunSettings] | None) -> "ModuleSettings":
        """``hparams`` (a module's hyper-parameters) typed by ``schema`` (its task's config schema: the
        ``head``, ``loss`` and ``data`` types; ``None``: those stay plain)."""
        return cls(
            model=ModelSettings.of(hparams.get("model"), key="model", fill=False),
            head=_typed(schema, "head", hparams.get("head")),
            loss=_typed(schema, "loss", hparams.get("loss")),
            data=_typed(schema, "data", hparams.get("data")),
        )


def kwargs_of(settings: Schema | None) -> dict[str, Any]:
    """The keys given in typed ``settings`` as keyword arguments (``{}`` for ``None``)."""
    return settings.kwargs() if settings is not None else {}


def _typed(schema: type[RunSettings] | None, key: str, value: Any) -> Any:
    kind = field_type(schema, key) if schema is not None else None
    if isinstance(kind, type) and issubclass(kind, Schema):
        return kind.of(value, key=key, fill=False)
    return value
