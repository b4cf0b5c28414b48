"""Multi-process runs under Hydra: who is rank zero, and how DDP re-launches a Hydra job.

Lightning's DDP launcher starts ranks 1..N-1 by re-running the script (``python run.py ...``). Its
Hydra support passes ``sys.argv`` on, so in a multirun (``-m``) every child starts a whole sweep of its
own (a second sweep directory, every job trained again). :func:`hydra_ddp_launch` makes each child
run exactly the parent's *job*: that job's overrides (the sweep values already chosen, e.g. one
Optuna trial) into that job's own output directory, in ``hydra.mode=RUN``, writing no ``.hydra``
record of its own. After the job the process group is torn down, so the next job of a sweep can
start a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

# Environment set by Lightning's launcher in the parent; restored after each job of a multirun.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides a child must not inherit: it runs one job, in the parent job's directory.
_PARENT_ONLY = (
    "hydra.run.",
    "hydra.sweep.",
    "hydra.mode",
    "hydra.job.name",
    "hydra.output_subdir",
    "hydra.sweeper",
    "hydra.launcher",
    "hydra/sweeper",
    "hydra/launcher",
)


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, from the environment (valid before the Trainer exists).

    Reads ``RANK`` (torchrun), else ``LOCAL_RANK`` + ``NODE_RANK`` (Lightning's launcher), else
    ``SLURM_PROCID`` (srun); a plain single process is rank zero.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", env.get("GROUP_RANK", 0))) == 0
    return int(env.get("SLURM_PROCID", 0)) == 0


def _config_flags(argv: Sequence[str]) -> list[str]:
    """``--config-path/--config-name/--config-dir`` of the parent's command line, if any."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))
    flags = []
    for flag, value in (
        ("--config-path", args.config_path),
        ("--config-name", args.config_name),
        ("--config-dir", args.config_dir),
    ):
        if value is not None:
            flags += [flag, value]
    return flags


def hydra_child_command(local_rank: int) -> tuple[list[str], str]:
    """Command line and working directory that re-run the current Hydra job as rank ``local_rank``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += _config_flags(sys.argv[1:])
    command += list(hydra_cfg.overrides.task)
    command += [o for o in hydra_cfg.overrides.hydra if not o.lstrip("~+").startswith(_PARENT_ONLY)]
    command += [
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        "hydra.mode=RUN",
        "hydra.output_subdir=null",
        f"hydra.job.name=train_ddp_process_{local_rank}",
    ]
    return command, hydra_cfg.runtime.cwd


@contextlib.contextmanager
def hydra_ddp_launch() -> Iterator[None]:
    """Within it, Lightning's DDP launcher starts child ranks with :func:`hydra_child_command`.

    On exit (in the launching process) the default process group is destroyed and the launcher's
    environment variables are restored, so that a later job of the same multirun starts cleanly.
    """
    from lightning.pytorch.strategies.launchers import subprocess_script

    saved_env = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    original = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = hydra_child_command
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original
        _end_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer that died already: nothing left to tear down
            dist.destroy_process_group()
