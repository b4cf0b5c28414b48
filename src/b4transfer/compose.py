"""The config of a run, composed from ``conf/`` exactly as ``python run.py key=value ...`` composes it.

Shared by the command line (:mod:`b4transfer.cli.entry`) and the Python API (:mod:`b4transfer.api`): the
config directory, the one-line message for a mistyped key or group choice
(:func:`b4transfer.cli.overrides.check_overrides`), and :func:`compose_config`, which uses Hydra's
compose API inside ``initialize_config_dir`` (so no global Hydra state outlives the call and the working
directory never changes) and gives the config the run function receives from ``@hydra.main``: the
``hydra`` node removed and ``run_dir`` set to the run directory Hydra would have made
(``hydra.run.dir``, by default ``outputs/<date>/<time>``, as an absolute path).

The config is checked against its task's schema (:func:`b4transfer.settings.validate`) as the command
line checks it. Nothing at import imports torch: ``python run.py --help`` stays quick.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from b4transfer.errors import UserError, UserTypeError
from b4transfer.settings.keys import config_dir, format_override

__all__ = ["RUN_DIR_DEFAULT", "compose_config", "config_dir", "format_override", "to_overrides"]

# conf/config.yaml's run_dir: the Hydra job's output directory (hydra.run.dir)
RUN_DIR_DEFAULT = "${hydra:runtime.output_dir}"


def to_overrides(overrides: Iterable[str] | Mapping[str, Any] | None) -> list[str]:
    """``overrides`` as the command line's ``key=value`` strings: a list of such strings is taken as is
    (every key of the CLI, ``+key=value``, ``~key``, config groups), a mapping is formatted with
    :func:`format_override` (``{"data.root": Path("/data"), "trainer.max_epochs": 5}``)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise UserTypeError(
            f"overrides={overrides!r} is one string; pass a list of 'key=value' strings, e.g. "
            f"overrides=[{overrides!r}], or a dict such as {{'trainer.max_epochs': 5}}."
        )
    if isinstance(overrides, Mapping):
        return [format_override(str(k), v) for k, v in overrides.items()]
    out = list(overrides)
    bad = [o for o in out if not isinstance(o, str)]
    if bad:
        raise UserTypeError(
            f"overrides holds {bad[0]!r} ({type(bad[0]).__name__}); each override is a 'key=value' string "
            "as on the command line, or pass a dict {'key': value}."
        )
    return out


def compose_config(overrides: list[str], *, run_dir: str | os.PathLike | None = None):
    """The run's config, as ``@hydra.main`` hands it to the run function.

    Args:
        overrides: The command line's ``key=value`` arguments (config groups, dotted keys, ``+key``,
            ``hydra.run.dir=...``).
        run_dir: Where the run writes; ``None``: the config's ``run_dir`` (default: ``hydra.run.dir``,
            i.e. ``outputs/<date>/<time>`` under the working directory, as the CLI).

    Returns:
        The composed ``DictConfig`` without its ``hydra`` node, ``run_dir`` an absolute path.

    Raises:
        UserError: A mistyped key or group choice (the CLI's one-line message, closest keys first), a
            sweep (``a=1,2``: the CLI's ``-m``), an override Hydra cannot parse, or a value of the wrong
            type or a key the task does not have (:func:`b4transfer.settings.validate`).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict

    from b4transfer.cli.overrides import check_overrides

    _refuse_sweeps(overrides)
    conf = config_dir()
    try:
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except HydraException as err:
        message = check_overrides(conf, list(overrides)) or _one_line(err)
        raise UserError(message) from None
    hydra_run_dir = os.path.abspath(str(OmegaConf.select(cfg, "hydra.run.dir")))
    with open_dict(cfg):
        del cfg["hydra"]
        if run_dir is not None:
            cfg.run_dir = os.path.abspath(os.fspath(run_dir))
        elif OmegaConf.to_container(cfg, resolve=False).get("run_dir") == RUN_DIR_DEFAULT:
            cfg.run_dir = hydra_run_dir
    from b4transfer.settings import validate

    validate(cfg, overrides)  # as the command line does, right after composition
    return cfg


def _refuse_sweeps(overrides: list[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException as err:  # as the command line says it, in one line
            raise UserError(
                f"Error parsing override {text!r}: {_one_line(err)} (quote a value holding brackets, commas, "
                "'=' or spaces: key='a value')"
            ) from None
        if override.is_sweep_override():
            raise UserError(
                f"{text}: a sweep (several values) runs one job per value with the command line's -m; "
                f"in Python, loop over the values and call once per value."
            )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
