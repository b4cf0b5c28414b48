"""Command line: ``python run.py key=value ...`` or the ``b4transfer`` console script.

A thin ``@hydra.main`` shim over :func:`b4transfer.modes.run`, sharing with the Python API
(:mod:`b4transfer.api`) the config directory and composition checks (:mod:`b4transfer.compose`) and
what counts as a user's error (:func:`b4transfer.api.runs.user_error_of`); the configs live in the
repository's ``conf/`` (shipped inside the package as ``b4transfer.conf`` when installed). Before
Hydra starts: ``--help`` (:mod:`b4transfer.cli.help`), ``--version``, and mistyped keys or group
choices told in one line (:mod:`b4transfer.cli.overrides`); Hydra's own ``--hydra-help`` stays.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from b4transfer.compose import config_dir
from b4transfer.errors import UserError

__all__ = ["before_hydra", "config_dir", "main", "objective", "share_cores_politely"]


def objective(cfg: DictConfig, summary: dict) -> float | None:
    """``cfg.optimized_metric`` of a run, for a sweeper (Optuna): the best checkpoint's score when the
    metric is ``checkpoint.monitor``, else the metric's final value; ``None`` when not configured."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name == cfg.get("checkpoint", {}).get("monitor") and summary.get("best_score") is not None:
        return float(summary["best_score"])
    metrics = summary.get("metrics", {})
    if name not in metrics:
        raise UserError(
            f"optimized_metric={name!r} was not logged by this run; logged: {', '.join(sorted(metrics))}. "
            "Fix: set optimized_metric to one of them (e.g. val/acc1)."
        )
    return float(metrics[name])


def _main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from b4transfer.api.runs import user_error_of
    from b4transfer.cli.cleanup import forget_refused_run
    from b4transfer.modes import run
    from b4transfer.settings import validate

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).propagate = False  # they print themselves; no second copy via Hydra
    # the library's own user errors and the known ones of its dependencies (as the Python API tells
    # them, b4transfer.api.runs.user_error_of): one message, exit 2; anything else is a bug and keeps
    # its traceback
    try:
        given = HydraConfig.get().overrides.task if HydraConfig.initialized() else None
        validate(cfg, given)  # types and keys against the task's schema, before any work
        return objective(cfg, run(cfg))
    except Exception as err:
        user_error = user_error_of(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        forget_refused_run()  # a refused run leaves no run directory (only what this process wrote goes)
        print(f"\nb4transfer: error: {user_error}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def share_cores_politely(environ=os.environ) -> None:
    """OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy
    (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``). libgomp's default spins first; with a second run on
    the same cores a spinning thread burns the core its partner needs, and two side-by-side runs on
    2 cores each took several times as long as one alone (BENCHMARKS.md "side by side"). It must be set
    before torch is imported, which the CLI does lazily."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"


_VERSION_FLAGS = ("-V", "--version")


def before_hydra(argv: list[str]) -> bool:
    """Handle what b4transfer answers itself: ``--help``/``-h``, ``--version``/``-V`` (True: done), and
    mistyped overrides (one line, exit status 2). Everything else goes on to Hydra (False)."""
    if "--hydra-help" in argv:
        return False
    if any(a in _VERSION_FLAGS or (len(a) > 3 and "--version".startswith(a)) for a in argv):
        from b4transfer.cli.help import version_text

        print(version_text())
        return True
    if "--help" in argv or "-h" in argv:
        from b4transfer.cli.help import help_text

        print(help_text(config_dir()), end="")
        return True
    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # Hydra's own report, with its traceback
        return False
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    other_configs = args.config_path or args.config_name or args.config_dir or args.experimental_rerun
    if not args.overrides or other_configs or args.shell_completion:
        return False
    from b4transfer.cli.overrides import check_overrides

    message = check_overrides(config_dir(), args.overrides, multirun=args.multirun)
    if message:
        print(f"b4transfer: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    return False


def main() -> None:
    share_cores_politely()
    if before_hydra(sys.argv[1:]):
        return
    logging.getLogger("PIL").setLevel(logging.INFO)
    hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(_main)()


if __name__ == "__main__":
    sys.exit(main())
