"""Run directories (never reuse one holding a run), checkpoint resolution, and ``summary.json``.

:class:`RefuseTakenRunDir` is a Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``): it refuses
a run whose directory already holds one *before* Hydra writes anything there (its ``.hydra/`` record,
its log file), so a refused run leaves the earlier one byte-identical.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from b4transfer.errors import RunDirTakenError, UserError, UserFileNotFoundError
from b4transfer.training import distributed

log = logging.getLogger(__name__)

# Files whose presence means a directory already holds a finished or running run.
RUN_MARKERS = ("summary.json", "checkpoints", "metrics.csv", "export", "predictions.csv")


def check_run_dir_free(run_dir: str | Path) -> None:
    """Raise :class:`RunDirTakenError` when ``run_dir`` already holds a run."""
    run_dir = Path(run_dir)
    taken = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if taken:
        raise RunDirTakenError(
            f"Run directory {run_dir} already holds an earlier run ({', '.join(taken)}); "
            "b4transfer never overwrites a run. Use a new hydra.run.dir=..., or to continue that "
            f"run pass ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}."
        )


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory, refuse to reuse one holding an earlier run, save the resolved config."""
    run_dir = Path(cfg.run_dir)
    if distributed.is_rank_zero():
        check_run_dir_free(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (rank zero only)."""
    if distributed.is_rank_zero():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def resolve_ckpt(cfg: DictConfig, *, required: bool) -> str | None:
    """``cfg.ckpt_path`` checked: ``last`` -> the newest ``last.ckpt`` under ``checkpoint.runs_root``."""
    from b4transfer.training.checkpointing import find_last_checkpoint

    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        runs_root = (cfg.get("checkpoint") or {}).get("runs_root") or "outputs"
        found = find_last_checkpoint(runs_root, exclude=Path(cfg.run_dir))
        log.info("ckpt_path=last: %s", found)
        return str(found)
    if ckpt is None:
        if required:
            raise UserError(
                f"mode={cfg.mode} needs a trained checkpoint: pass ckpt_path=PATH/TO/last.ckpt "
                "(written by mode=train into <run dir>/checkpoints/)."
            )
        return None
    if Path(ckpt).is_dir():
        near = [p for p in (Path(ckpt) / "last.ckpt", Path(ckpt) / "checkpoints/last.ckpt") if p.is_file()]
        raise UserError(
            f"ckpt_path={ckpt!r} is a directory; pass the checkpoint file itself, e.g. "
            f"ckpt_path={near[0] if near else Path(ckpt) / 'checkpoints' / 'last.ckpt'}."
        )
    if not Path(ckpt).is_file():
        raise UserFileNotFoundError(
            f"ckpt_path={ckpt!r} does not exist. Pass the path of a checkpoint written by a training run, "
            "e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt."
        )
    return str(ckpt)


try:  # Hydra >= 1.1
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class RefuseTakenRunDir(_HydraCallback):
    """Hydra callback: refuse a run whose ``hydra.run.dir`` (or a sweep whose ``hydra.sweep.dir``) already
    holds one, before Hydra writes anything into it (one message, exit status 2). DDP child ranks and
    requeued SLURM jobs (which continue their own run) are let through."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._refuse_taken(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = [d for d in sweep.iterdir() if d.is_dir()] if sweep.is_dir() else []
        if (sweep / "multirun.yaml").exists():
            self._refuse(
                RunDirTakenError(
                    f"Sweep directory {sweep} already holds an earlier sweep (multirun.yaml); b4transfer "
                    "never overwrites a run. Use a new hydra.sweep.dir=..."
                )
            )
        for job in jobs:
            self._refuse_taken(job)

    def _refuse_taken(self, run_dir: str | Path) -> None:
        try:
            check_run_dir_free(run_dir)
        except RunDirTakenError as err:
            self._refuse(err)

    @staticmethod
    def _refuse(err: RunDirTakenError) -> None:
        if not distributed.is_rank_zero() or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
            return
        print(f"\nb4transfer: error: {err}", file=sys.stderr)
        raise SystemExit(2)
