"""Mistyped command-line overrides, told in one line before Hydra starts a run.

Hydra reports an unknown key as ``Key 'rot' is not in struct`` (exit 1) and an unknown group choice
with a list that includes the shared ``_common`` pieces. :func:`check_overrides` composes the config
as Hydra will and turns those two errors into one line each: the unknown key with the closest valid
keys (``difflib`` over the composed config's dotted keys) and, where a new key is taken (an open group
of :mod:`b4transfer.settings`: ``trainer``, ``optim`` ...), the ``+key=value`` fix, or the unknown
choice with the group's choices, closest first. A key another task owns (``loss.name`` with
``task=detection``: it lives in ``conf/task/classification.yaml``) is named as that task's, with the fix.
Any other problem (a parse error, a plug-in missing) is left to Hydra's own report.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

from b4transfer.cli.help import visible_choices
from b4transfer.settings.keys import closest_keys

_MAX_PROBLEMS = 5


def check_overrides(conf: str, overrides: list[str], *, multirun: bool = False) -> str | None:
    """One line naming every mistyped key or group choice in ``overrides`` (with the fix), or ``None``
    when they compose or fail for another reason (Hydra reports those itself).

    Args:
        conf: The primary config directory.
        overrides: The command line's ``key=value`` arguments.
        multirun: ``-m``: sweeps (``a=1,2``) are checked with their first value; every value of a
            sweep over a config group must be one of its choices.
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    try:
        job, group_sweeps, typed = _one_job(overrides, multirun)
    except HydraException:  # a parse error: Hydra's message shows where
        return None
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        cfg, problems = _compose_dropping_mistakes(job)
        if cfg is None:
            return None
        for key, values in group_sweeps:
            options = loader.get_group_options(key)
            problems += [_unknown_choice(key, v, options) for v in values if options and v not in options]
        keys = list(_dotted_keys(cfg))
        lines = [
            p if isinstance(p, str) else _misplaced_key(typed[p[0]], p[1], cfg, loader)
            or _unknown_key(typed[p[0]], p[1], keys)
            for p in problems
        ]
    return "; ".join(dict.fromkeys(lines)) or None


def _one_job(overrides: list[str], multirun: bool) -> tuple[list[str], list[tuple[str, list[str]]], dict]:
    """The overrides of one job (each sweep at its first value), the values of each discrete sweep, and
    ``{job override: the override as typed}``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        return list(overrides), [], {o: o for o in overrides}
    job, sweeps, typed = [], [], {}
    for text, override in zip(overrides, parsed):
        one = text
        if override.is_sweep_override():
            if not override.is_discrete_sweep() or override.value_type.name == "GLOB_CHOICE_SWEEP":
                continue  # interval sweeps (Optuna) and globs: the sweeper reads them; not checked here
            values = list(override.sweep_string_iterator())
            one = f"{override.get_key_element()}={values[0]}"
            sweeps.append((override.key_or_group, values))
        job.append(one)
        typed[one] = text
    return job, sweeps, typed


def _compose_dropping_mistakes(overrides: list[str]) -> tuple[Any, list]:
    """Compose ``overrides``; each unknown key or choice is noted and dropped, and composition retried.
    Returns the composed config (``None`` on any other error) and the problems noted."""
    from hydra import compose
    from hydra.errors import ConfigCompositionException, MissingConfigException

    remaining, problems = list(overrides), []
    while len(problems) <= _MAX_PROBLEMS:
        try:
            return compose(config_name="config", overrides=remaining, return_hydra_config=True), problems
        except MissingConfigException as err:
            found = _typed_choice(err, remaining)
            if found is None:
                break
            remaining.remove(found[0])
            problems.append(_unknown_choice(*found[1:], err.options or []))
        except ConfigCompositionException as err:
            found = _typed_key(err, remaining)
            if found is None:
                break
            remaining.remove(found[0])
            problems.append(found)
    return (None, problems) if not problems else (_base_config(remaining), problems)


def _base_config(overrides: list[str]) -> Any:
    from hydra import compose

    try:
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception:
        return compose(config_name="config", return_hydra_config=True)


def _typed_choice(err, overrides: list[str]) -> tuple[str, str, str] | None:
    """``(override, group, choice)`` when ``err`` is about a choice typed on the command line."""
    group, _, choice = (err.missing_cfg_file or "").rpartition("/")
    for text in overrides:
        if text.lstrip("+") == f"{group}={choice}":
            return text, group, choice
    return None


def _typed_key(err, overrides: list[str]) -> tuple[str, str] | None:
    """``(override, key)`` when ``err`` says the key of a command-line override is unknown."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if not isinstance(err.__cause__, (ConfigAttributeError, ConfigKeyError)):
        return None
    unknown = err.__cause__.full_key  # the first missing part: dta for dta.root
    for text in overrides:
        name = text.partition("=")[0].lstrip("+")
        if name == unknown or name.startswith(f"{unknown}."):
            return text, name
    return None


def _misplaced_key(override: str, key: str, cfg: Any, loader) -> str | None:
    """The one line for a key that ``cfg``'s task does not have but another task's config does."""
    from hydra import compose
    from omegaconf import OmegaConf

    task = cfg.get("task")
    owners = []
    for other in visible_choices(loader.get_group_options("task")):
        if other == task:
            continue
        try:
            composed = compose(config_name="config", overrides=[f"task={other}"])
        except Exception:  # noqa: BLE001 - a task whose config does not compose alone owns nothing here
            continue
        if OmegaConf.select(composed, key, default="_absent_") != "_absent_":
            owners.append(other)
    if not owners:
        return None
    tasks = " and ".join(f"task={o}" for o in owners)
    return (
        f"{override}: {key} is a setting of {tasks}, not of task={task} (conf/task/{owners[0]}.yaml). "
        f"Fix: drop {key}, or choose {tasks}"
    )


def _unknown_choice(group: str, choice: str, options: list[str]) -> str:
    choices = sorted(
        visible_choices(options), key=lambda o: -difflib.SequenceMatcher(None, choice, o).ratio()
    )
    return f"{group}={choice}: no such {group} config; choose one of {', '.join(choices)} (closest first)"


def _unknown_key(override: str, key: str, keys: list[str]) -> str:
    from b4transfer.settings import takes_new_keys

    value = override.partition("=")[2]
    pool = keys if key.startswith("hydra") else [k for k in keys if not k.startswith("hydra")]
    close = closest_keys(key, pool)
    near = f"closest: {', '.join(close)}" if close else "no key is close (python run.py --cfg job lists them)"
    # a new key only where a library takes it (trainer, optim, callbacks ...): the schema refuses others
    add = f", or add a new key with +{key}={value}" if key.startswith("hydra") or takes_new_keys(key) else ""
    return f"{override}: unknown key {key!r}; {near}. Fix: correct it{add}"


def _dotted_keys(cfg: Any) -> Iterator[str]:
    """Every key of ``cfg`` as ``a.b.c`` (mappings are descended, lists are not)."""
    from omegaconf import OmegaConf

    def walk(node: Any, prefix: str) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{prefix}{k}"
                yield from walk(v, f"{prefix}{k}.")

    yield from walk(OmegaConf.to_container(cfg, resolve=False), "")
