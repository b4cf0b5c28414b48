"""Keys and values as the command line writes them: where ``conf/`` is, ``key=value`` in Hydra's override
syntax, and the closest keys to a mistyped one. Shared by the schemas' messages, the composition
(:mod:`b4transfer.compose`) and the command line's checks (:mod:`b4transfer.cli.overrides`); it imports
neither torch nor any other part of b4transfer but its errors."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from b4transfer.errors import UserTypeError

__all__ = ["closest_keys", "config_dir", "format_override"]


def config_dir() -> str:
    """``conf/`` of a source checkout, else the copy installed as the ``b4transfer.conf`` package."""
    checkout = Path(__file__).resolve().parents[3] / "conf"
    if (checkout / "config.yaml").is_file():
        return str(checkout)
    return str(Path(__file__).resolve().parents[1] / "conf")  # installed wheel: b4transfer/conf/


_PLAIN = re.compile(r"^[A-Za-z0-9_./\\:@~+-]+$")  # a value Hydra's override grammar takes unquoted


def format_override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override syntax: ``None`` -> ``null``, booleans lower case, lists and
    tuples as ``[a,b]``, strings quoted when they hold characters the grammar reserves (spaces, commas,
    brackets, ``=``, quotes...)."""
    return f"{key}={_value(value)}"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in ("null", "true", "false"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise UserTypeError(
        f"override value {value!r} ({type(value).__name__}) has no Hydra form; pass a string, number, "
        "boolean, None, list or dict, or write the override as a 'key=value' string."
    )


def closest_keys(key: str, keys: list[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The ``n`` keys most like ``key``: the mean of ``difflib``'s ratio of the whole dotted keys and of
    their last parts (``data.rot`` -> ``data.source.root`` before ``data.crop_pct``)."""

    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        leaf = difflib.SequenceMatcher(None, key.rpartition(".")[2], candidate.rpartition(".")[2]).ratio()
        return (whole + leaf) / 2

    scored = sorted(((score(k), k) for k in keys), key=lambda s: -s[0])
    return [k for s, k in scored[:n] if s >= cutoff]
