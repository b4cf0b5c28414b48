"""A refused run leaves no run directory behind.

Hydra creates ``outputs/<date>/<time>/`` and writes ``.hydra/`` and the job's log into it before the
run starts; a run b4transfer then refuses (a :class:`~b4transfer.errors.UserError`, exit status 2)
would leave that directory, plus ``config_resolved.yaml``, behind. :class:`RememberRunDirs` (a Hydra
callback, ``hydra.callbacks`` in ``conf/config.yaml``) notes, before Hydra writes anything, which
directories did not exist yet; after a refusal :func:`forget_refused_run` removes the run directory
and the parents this process created, but only while they hold nothing but what this process wrote.
A directory that existed before (``hydra.run.dir=`` pointed at it) keeps everything it held; an
earlier run or another job of a sweep is never touched.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from b4transfer.training import distributed

try:  # Hydra >= 1.1
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object

_HYDRA_RECORD = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into .hydra/
_SWEEP_RECORD = "multirun.yaml"  # what the sweeper writes into the sweep directory


@dataclass(frozen=True)
class _Before:
    """A directory as it was before the run: ``top`` is the highest directory on its path that did not
    exist (``None``: the directory itself existed), ``entries`` the names it held."""

    top: Path | None
    entries: frozenset[str]


_BEFORE: dict[Path, _Before] = {}


def remember(directory: str | Path) -> None:
    """Note how ``directory`` (a run or sweep directory) was before this process wrote anything."""
    directory = Path(os.path.abspath(directory))
    top, path = None, directory
    while not path.exists() and path != path.parent:
        top, path = path, path.parent
    entries = frozenset(os.listdir(directory)) if directory.is_dir() else frozenset()
    _BEFORE[directory] = _Before(top, entries)


class RememberRunDirs(_HydraCallback):
    """Hydra callback: :func:`remember` the run (or sweep) directory before Hydra creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        remember(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        remember(config.hydra.sweep.dir)


def forget_refused_run() -> None:
    """After a refusal: remove the Hydra run directory of this job (see the module doc). Outside a Hydra
    job, on other ranks than zero, or for a directory not remembered, nothing happens."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not distributed.is_rank_zero():
        return
    hydra = HydraConfig.get()
    ours = {f"{hydra.job.name}.log", "config_resolved.yaml"} | {hydra.output_subdir} - {None}
    forget(hydra.runtime.output_dir, ours)


def forget(run_dir: str | Path, ours: set[str]) -> None:
    """Remove from ``run_dir`` the entries named in ``ours`` that this process wrote, and the directory
    and its parents this process created, while they hold nothing else."""
    run_dir = Path(os.path.abspath(run_dir))
    for root, before in _BEFORE.items():
        if run_dir == root:
            _forget_run(run_dir, before, ours)
        elif root in run_dir.parents:
            _forget_job(root, run_dir, before, ours)


def _forget_run(run_dir: Path, before: _Before, ours: set[str]) -> None:
    if before.top is None:  # the user's own directory: take back what this run added, if only ours
        added = set(os.listdir(run_dir)) - before.entries
        if added <= ours:
            _remove(run_dir, added)
    elif _only(run_dir, ours):
        _remove(run_dir, ours)
        _rmdir_up_to(run_dir, before.top)


def _forget_job(sweep: Path, job_dir: Path, before: _Before, ours: set[str]) -> None:
    first = job_dir.relative_to(sweep).parts[0]
    if first in before.entries or not _only(job_dir, ours):
        return  # a directory that was there before this sweep, or one holding more than ours
    _remove(job_dir, ours)
    _rmdir_up_to(job_dir, sweep / first)
    left = set(os.listdir(sweep)) - before.entries
    if left == {_SWEEP_RECORD}:  # no job of this sweep left: its record goes too
        _remove(sweep, {_SWEEP_RECORD})
        if before.top is not None:
            _rmdir_up_to(sweep, before.top)


def _only(directory: Path, ours: set[str]) -> bool:
    """``directory`` holds nothing but entries named in ``ours`` (Hydra's record dir: its own files)."""
    for entry in directory.iterdir():
        if entry.name not in ours:
            return False
        if entry.is_dir() and not set(os.listdir(entry)) <= set(_HYDRA_RECORD):
            return False
    return True


def _remove(directory: Path, names: set[str]) -> None:
    """Remove the files ``names`` in ``directory`` (a Hydra record directory with its files)."""
    _close_logs_in(directory)
    for name in names:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            for record in _HYDRA_RECORD:
                (path / record).unlink(missing_ok=True)
            _rmdir_up_to(path, path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _rmdir_up_to(directory: Path, top: Path) -> None:
    """Remove ``directory`` and its parents, up to and including ``top``, while they are empty."""
    while directory == top or top in directory.parents:
        try:
            directory.rmdir()
        except OSError:  # not empty (another run's files, a file the user put there)
            return
        directory = directory.parent


def _close_logs_in(directory: Path) -> None:
    """Close the logging file handlers writing into ``directory`` (Hydra's job log)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == directory:
                logger.removeHandler(handler)
                handler.close()
