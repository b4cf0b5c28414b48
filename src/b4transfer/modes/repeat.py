"""Repeated training: ``data.kfold=K`` (every fold) and ``seeds=[...]`` (every seed), one after another.

Each run is a whole ``mode=train`` run in ``<run dir>/fold<i>-seed<s>/`` (checkpoints, export, its own
``summary.json``); the run directory's ``summary.json`` lists every run's result and the mean ± sd of
the best checkpoint's score (``checkpoint.monitor``, the task's metric) over the runs. ``best_score``
there is that mean, so a sweeper (``optimized_metric``) optimises the cross-validated score.
For several devices, run the folds / seeds as a Hydra multirun instead (``-m data.fold=0,1,2``,
``-m seed=0,1``).
"""

from __future__ import annotations

import copy
import logging
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from b4transfer import tasks
from b4transfer.config import SEED_RANGE, is_seed, plain
from b4transfer.data.kfold import check_kfold
from b4transfer.errors import UserError
from b4transfer.modes.distill import distill
from b4transfer.modes.train import train
from b4transfer.runs import prepare_run_dir, write_summary

log = logging.getLogger(__name__)


def _seeds(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value or len(set(value)) != len(value)
            or any(isinstance(s, bool) or not isinstance(s, int) for s in value)):
        raise UserError(f"seeds={value!r} must be a list of distinct whole numbers, e.g. seeds=[0,1,2].")
    bad = [s for s in value if not is_seed(s)]
    if bad:
        raise UserError(
            f"seeds={value!r}: {', '.join(map(str, bad))} {'is' if len(bad) == 1 else 'are'} not a seed; "
            f"a seed is a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]} (2**32 - 1). "
            "Fix: e.g. seeds=[0,1,2]."
        )
    return value


def _one_device(cfg: DictConfig) -> bool:
    devices = plain(cfg.trainer.get("devices"))
    n = len(devices) if isinstance(devices, list) else devices
    strategy = (plain(cfg.get("strategy")) or {}).get("name", "auto")
    return strategy == "auto" and n in (1, "1", None) and int(cfg.trainer.get("num_nodes") or 1) == 1


def plan(cfg: DictConfig) -> list[tuple[int | None, int | None]] | None:
    """The ``(seed, fold)`` runs that ``seeds`` / ``data.kfold`` ask for; ``None`` for one plain run.

    Raises:
        UserError: what cannot repeat (another mode, a resume, several devices, bad values), up front.
    """
    seeds = _seeds(plain(cfg.get("seeds")))
    kfold, fold = check_kfold(plain(cfg.data.get("kfold")), plain(cfg.data.get("fold")))
    folds = list(range(kfold)) if kfold and fold is None else None
    if seeds is None and folds is None:
        return None
    asked = " ".join(([f"seeds={seeds}"] if seeds else []) + ([f"data.kfold={kfold}"] if folds else []))
    if cfg.mode not in ("train", "distill"):
        pick = "seed=S" + (" data.fold=i" if folds else "") if seeds else "data.fold=i"
        raise UserError(
            f"{asked} trains several runs (mode=train); for mode={cfg.mode} pass one run's checkpoint "
            f"and {pick}."
        )
    if cfg.get("ckpt_path"):
        raise UserError(f"{asked} starts new runs and cannot resume ckpt_path={cfg.ckpt_path}; drop one.")
    if not _one_device(cfg):
        raise UserError(
            f"{asked} runs one device at a time; for several devices run a Hydra multirun instead "
            "(-m data.fold=0,1,2 data.kfold=3, or -m seed=0,1)."
        )
    return [(s, f) for s in (seeds or [None]) for f in (folds if folds is not None else [None])]


def _child(cfg: DictConfig, seed: int | None, fold: int | None, run_dir: Path) -> DictConfig:
    child = copy.deepcopy(cfg)
    with open_dict(child):
        child.seeds = None
        child.run_dir = str(run_dir)
        if seed is not None:
            child.seed = seed
        if fold is not None:
            child.data.fold = fold
    return child


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and count."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values)}


def train_runs(cfg: DictConfig, runs: list[tuple[int | None, int | None]]) -> dict[str, Any]:
    """Train every ``(seed, fold)`` of ``runs`` in turn; the summary of them all (see the module doc)."""
    task = tasks.from_config(cfg)
    task.check_config(cfg)
    run_dir = prepare_run_dir(cfg)
    monitor = (plain(cfg.get("checkpoint")) or {}).get("monitor") or task.monitor
    results = []
    for n, (seed, fold) in enumerate(runs, 1):
        parts = ([f"fold{fold}"] if fold is not None else []) + ([f"seed{seed}"] if seed is not None else [])
        name = "-".join(parts)
        log.info("Run %d/%d: %s -> %s", n, len(runs), name, run_dir / name)
        child = _child(cfg, seed, fold, run_dir / name)
        summary = distill(child) if cfg.mode == "distill" else train(child)
        results.append({
            "seed": seed if seed is not None else cfg.seed, "fold": fold, "run_dir": str(run_dir / name),
            "best_score": summary["best_score"], "final": summary["metrics"].get(monitor),
            "epochs": summary["epochs"], "train_images": summary["train_images"],
            "val_images": summary["val_images"], "wall_time_s": summary["wall_time_s"],
            "best_checkpoint": summary["best_checkpoint"],
        })
    scores = [r["best_score"] for r in results if r["best_score"] is not None]
    stats = {"monitor": monitor, **(spread(scores) if scores else {"mean": None, "sd": None, "n": 0})}
    if scores:
        stats["text"] = f"{monitor} {stats['mean']:.4f} ± {stats['sd']:.4f} over {len(scores)} runs"
        log.info("Best %s", stats["text"])
    summary = {
        "mode": cfg.mode, "task": task.name, "kfold": plain(cfg.data.get("kfold")),
        "seeds": sorted({r["seed"] for r in results}), "runs": results, "spread": stats,
        "best_score": stats["mean"], "wall_time_s": round(sum(r["wall_time_s"] for r in results), 2),
    }
    write_summary(run_dir, summary)
    return summary
