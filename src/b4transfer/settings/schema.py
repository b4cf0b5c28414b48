"""How a schema checks a config: types from the dataclass fields, defaults from the YAML.

A schema is a dataclass deriving from :class:`Schema` whose fields carry the TYPE of each key and, where
``conf/`` holds the default, no value of their own (``omegaconf.MISSING``): each default stays written
once, in the YAML. :meth:`Schema.of` checks a config node (or a plain mapping, such as a checkpoint's
hyper-parameters) against it with OmegaConf's structured merge and returns the typed object; a value of
the wrong type or a key the schema does not have is one :class:`~b4transfer.errors.UserError` line naming
the full dotted key, the value given, what was expected and the fix.

- A key the schema declares but the config does not hold (an optimizer's ``momentum`` under ``optim=adamw``,
  a node removed with ``~key``) is ``None`` in the typed object.
- An *open* schema (``OPEN = True``: ``trainer``, ``optim``, ``strategy`` ... whose keys go on to a library)
  also takes keys it does not declare; :meth:`Schema.extra` gives them back, unchecked (the library checks).
- A field typed ``Any`` with ``metadata={"schema": S}`` (``data.augment``: ``false`` or a mapping) checks a
  mapping value against ``S``; any other value must be one of ``metadata["or"]``.

Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Union

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from b4transfer.errors import UserError, UserTypeError
from b4transfer.settings.keys import closest_keys, config_dir, format_override

__all__ = ["MISSING", "Schema", "absent", "dotted_fields", "example", "expected", "field_type", "given"]

# Called with (dotted key, value) for a key a closed schema does not have; returns the error to raise.
UnknownKey = Callable[[str, Any], Exception]


def given(**metadata: Any) -> Any:
    """A field whose default is written in ``conf/`` (``MISSING`` here), with optional ``metadata``."""
    return dataclasses.field(default=MISSING, metadata=metadata)


def absent() -> Any:
    """A field no YAML writes (a user adds it with ``+key=value``): ``None`` unless given."""
    return dataclasses.field(default=None, metadata={"added": True})


class Schema:
    """Base of every settings schema (a dataclass subclass)."""

    OPEN: ClassVar[bool] = False  # keys it does not declare go on to a library (kept in extra())
    DEFAULTS: ClassVar[tuple[str, str] | None] = None  # (conf file, key): what .of() fills missing keys from

    def receivers(self) -> tuple[str, list[Callable]] | None:
        """An open schema's library: ``(its name, the callables its undeclared keys go to)``, the last one
        the final receiver; a key none of them takes is refused at validation (before any data is read)
        instead of failing inside the library. ``None``: not checked (the receiver takes ``**kwargs`` or
        cannot be resolved here; the library checks)."""
        return None

    RESERVED: ClassVar[tuple[str, ...]] = ()  # library arguments b4transfer sets itself (never from config)
    RESERVED_FIX: ClassVar[dict[str, str]] = {}  # where to set a reserved one instead

    def extra(self) -> dict[str, Any]:
        """The keys an open schema took without declaring them (e.g. ``+trainer.max_steps=100``)."""
        return dict(getattr(self, "_extra", {}))

    def kwargs(self, *skip: str) -> dict[str, Any]:
        """The keys given (declared ones, ``None`` included, and the extra ones), as plain values, but
        ``skip``: what an open schema hands to its library, or a builder takes as keyword arguments."""
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        out = {n: _plain(getattr(self, n)) for n in names if n in getattr(self, "_given", names)}
        out.update(self.extra())
        return {k: v for k, v in out.items() if k not in skip}

    @classmethod
    def of(cls, node: Any, *, key: str, unknown: UnknownKey | None = None, fill: bool = True):
        """``node`` (a config node or a plain mapping; ``None``: empty) checked and typed.

        Args:
            node: The settings, complete or partial.
            key: Its dotted key in the config (``optim``; ``""`` for the root), for the messages.
            unknown: The error for a key a closed schema does not have (default: the closest keys).
            fill: Fill keys ``node`` lacks from ``DEFAULTS`` (the YAML), when the schema names one.

        Raises:
            UserError: A value of the wrong type, or an unknown key (one line each).
        """
        tree = _container(node)
        if not isinstance(tree, Mapping):
            raise UserTypeError(f"{key}={tree!r} is not a mapping of settings. Fix: e.g. {key}.<key>=...")
        if fill and cls.DEFAULTS:
            tree = {**_yaml_default(*cls.DEFAULTS), **tree}
        return _check(cls, dict(tree), key, unknown or _closest_key_error(cls, key))


# ---------------------------------------------------------------------------------------------- checking
def _check(cls: type, tree: dict, prefix: str, unknown: UnknownKey) -> Any:
    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in dataclasses.fields(cls)}
    extra, nested, plain_tree = {}, {}, {}
    for name, value in tree.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        fld = declared.get(name)
        if fld is None:
            if not cls.OPEN:
                raise unknown(key, value)
            extra[name] = value
            continue
        sub = _schema_of(hints[name], fld)
        if sub is not None and isinstance(value, Mapping):
            nested[name] = _check(sub, dict(value), key, unknown)
        elif sub is not None and value is not None and "or" not in fld.metadata:
            if not _is_interpolation(value):
                raise _type_error(key, value, hints[name])
            plain_tree[name] = value
        elif "or" in fld.metadata and not isinstance(value, Mapping):
            if value not in fld.metadata["or"] and not _is_interpolation(value):
                raise _type_error(key, value, fld.metadata["or_type"])
            nested[name] = value
        else:
            plain_tree[name] = value
    try:
        merged = OmegaConf.merge(OmegaConf.structured(_leaves_only(cls)), plain_tree)
    except OmegaConfBaseException as err:
        name = str(err.full_key).replace("[", ".").split(".")[0]
        key = f"{prefix}.{name}" if prefix else name
        raise _type_error(key, plain_tree.get(name), hints.get(name, Any)) from None
    typed = OmegaConf.to_container(merged, resolve=False, throw_on_missing=False)
    values = {}
    for name in declared:
        if name in nested:
            values[name] = nested[name]
        else:
            values[name] = None if OmegaConf.is_missing(merged, name) else typed[name]
    obj = cls(**values)
    object.__setattr__(obj, "_extra", extra)
    object.__setattr__(obj, "_given", {n for n in declared if n in tree})
    if extra:
        _check_library_keys(obj, extra, prefix)
    return obj


def _check_library_keys(obj: Schema, extra: dict, prefix: str) -> None:
    """Refuse an undeclared key of an open schema that its library does not take (:meth:`Schema.receivers`)
    or that b4transfer sets itself (:attr:`Schema.RESERVED`)."""
    for name, value in extra.items():
        if name in obj.RESERVED:
            fix = f" ({obj.RESERVED_FIX[name]})" if name in obj.RESERVED_FIX else ""
            raise UserError(f"{prefix}.{name}={value!r}: b4transfer sets {name} itself. Fix: drop it{fix}")
    try:
        found = obj.receivers()
    except Exception:  # noqa: BLE001 - an unresolvable receiver (a bad name) is refused where it is built
        return
    if not found:
        return
    library, callables = found
    takes: list[str] = []
    for fn in callables:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return
        if fn is callables[-1] and any(p.kind is p.VAR_KEYWORD for p in params):
            return
        takes += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    own = {f.name for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    takes = [t for t in dict.fromkeys(takes) if t not in obj.RESERVED and t != "self"]
    for name, value in extra.items():
        if name not in takes:
            close = closest_keys(name, list(dict.fromkeys(takes + sorted(own))))  # a declared key: once
            near = f"closest: {', '.join(f'{prefix}.{c}' for c in close)}" if close else "none is close"
            raise UserError(
                f"{prefix}.{name}={value!r}: {library} takes no argument {name!r} ({near}). "
                f"Fix: correct it, or drop it"
            )


@functools.cache
def _leaves_only(cls: type) -> type:
    """``cls`` with its nested schemas typed ``Any`` (they are checked on their own by :func:`_check`)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for fld in dataclasses.fields(cls):
        kind = Any if _schema_of(hints[fld.name], fld) is not None else hints[fld.name]
        specs.append((fld.name, kind, dataclasses.field(default=MISSING)))
    return dataclasses.make_dataclass(f"{cls.__name__}Leaves", specs)


def _schema_of(kind: Any, fld: dataclasses.Field) -> type | None:
    """The nested schema of a field (``Optional[S]``, ``S``, or ``metadata["schema"]``), else ``None``."""
    if "schema" in fld.metadata:
        return fld.metadata["schema"]
    for option in typing.get_args(kind) or (kind,):
        if isinstance(option, type) and issubclass(option, Schema):
            return option
    return None


def _container(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return {} if node is None else node


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=False)
    if isinstance(value, Schema):
        return value.kwargs()
    return value


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


@functools.cache
def _yaml_default(file: str, key: str) -> dict:
    loaded = OmegaConf.load(Path(config_dir()) / file)
    node = OmegaConf.select(loaded, key) if key else loaded
    tree = OmegaConf.to_container(node, resolve=False)
    tree.pop("defaults", None)
    return tree


# ---------------------------------------------------------------------------------------------- messages
def field_type(schema: type, dotted: str) -> Any:
    """The annotation of the dotted key ``dotted`` in ``schema`` (``None``: no such field)."""
    head, _, rest = dotted.partition(".")
    declared = {f.name: f for f in dataclasses.fields(schema)}
    if head not in declared:
        return Any if schema.OPEN else None
    kind = typing.get_type_hints(schema)[head]
    if not rest:
        return kind
    sub = _schema_of(kind, declared[head])
    if sub is not None:
        return field_type(sub, rest)
    free = kind is Any or any(typing.get_origin(k) is dict for k in (kind, *typing.get_args(kind)))
    return Any if free else None


def dotted_fields(schema: type, prefix: str = "") -> Iterator[str]:
    """Every declared key of ``schema`` as ``a.b.c`` (nested schemas descended)."""
    hints = typing.get_type_hints(schema)
    for fld in dataclasses.fields(schema):
        key = f"{prefix}{fld.name}"
        yield key
        sub = _schema_of(hints[fld.name], fld)
        if sub is not None:
            yield from dotted_fields(sub, f"{key}.")


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def expected(kind: Any) -> str:
    """``kind`` in words: ``an integer``, ``a number or null``, ``a list of integers``..."""
    if kind is Any:
        return "a value"
    if isinstance(kind, str):
        return kind
    if isinstance(kind, type) and issubclass(kind, Schema):
        return "a mapping of settings"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        words = [expected(a) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin in (list, typing.List):  # noqa: UP006 - typing.List is what OmegaConf schemas may use
        return f"a list of {expected(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin in (dict, typing.Dict):  # noqa: UP006
        return "a mapping"
    return _NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def _type_error(key: str, value: Any, kind: Any) -> UserTypeError:
    options = (kind, *typing.get_args(kind))
    sub = next((k for k in options if isinstance(k, type) and issubclass(k, Schema)), None)
    if sub is not None:  # a group of settings: one of its keys, not the whole mapping
        first = dataclasses.fields(sub)[0]
        inner = f"{key}.{first.name}"
        fix = f"{inner}={example(inner, typing.get_type_hints(sub)[first.name])}"
    else:
        fix = f"{key}={example(key, kind)}"
    return UserTypeError(f"{key}={value!r} is not {expected(kind)}. Fix: e.g. {fix}")


def example(key: str, kind: Any = Any) -> str:
    """A value of ``key`` for a message's fix: the first non-null value ``conf/`` writes for it, else one
    of its type."""
    for value in _yaml_values(key):
        if value is not None:
            return format_override(key, value).partition("=")[2]
    for option in typing.get_args(kind) or (kind,):
        if option in (int, float, bool, str):
            return {int: "1", float: "0.5", bool: "true", str: "<name>"}[option]
        if typing.get_origin(option) in (list, typing.List):  # noqa: UP006
            return "[...]"
    return "null"


def _yaml_values(key: str) -> Iterator[Any]:
    """The values ``conf/`` writes for the dotted ``key``: config.yaml, the files of its group, then the
    global packages (tasks, task_data, experiments)."""
    conf = Path(config_dir())
    group, _, rest = key.partition(".")
    files = [(conf / "config.yaml", key)]
    files += [(p, rest) for p in sorted((conf / group).glob("*.yaml"))] if rest else []
    for folder in ("task", "task_data", "experiment"):  # global packages
        files += [(p, key) for p in sorted((conf / folder).glob("*.yaml"))]
    for path, inner in files:
        value = OmegaConf.select(_load(path), inner, default="???missing")
        if value != "???missing":
            yield _container(value) if isinstance(value, (DictConfig, ListConfig)) else value


@functools.cache
def _load(path: Path) -> DictConfig:
    return OmegaConf.load(path)


def _closest_key_error(schema: type, prefix: str) -> UnknownKey:
    """The default error for a key ``schema`` (at ``prefix``) does not have: the closest keys and the fix."""

    def error(key: str, value: Any) -> Exception:
        keys = [f"{prefix}.{k}" if prefix else k for k in dotted_fields(schema)]
        return unknown_key_error(key, value, keys)

    return error


def unknown_key_error(key: str, value: Any, keys: list[str]) -> UserError:
    """One line for an unknown ``key``: its value, the closest of ``keys`` and the fix."""
    close = closest_keys(key, keys)
    near = f"closest: {', '.join(close)}" if close else "no key is close (python run.py --cfg job lists them)"
    return UserError(
        f"{key}={value!r}: unknown key; {near}. Fix: correct it, or drop it (b4transfer reads no such key)"
    )
