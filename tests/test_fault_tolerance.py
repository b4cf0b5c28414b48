"""Fault tolerance: atomic checkpoint writes, SIGKILL/SIGTERM mid-epoch + resume, ckpt_path=last, requeue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import TINY, compose_cfg

from b4transfer.checkpointing import SIGTERM_EXIT_CODE, find_last_checkpoint, step_checkpoint
from b4transfer.modes import train

ROOT = Path(__file__).resolve().parents[1]
# 24 images, 20% held out -> 18 training images; batch 2 -> 9 steps per epoch, 18 in two epochs.
RUN = ("data.batch_size=2", "trainer.max_epochs=2", "checkpoint.every_n_train_steps=2")
STEPS_PER_EPOCH = 9

# Runs train(cfg) in a fresh process and sends itself `sig` right after optimizer step `step`.
_SIGNAL_AT_STEP = """
import os, signal, sys
import lightning as L
from tests.conftest import compose_cfg, TINY
from b4transfer.modes import train

class SignalAt(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.{sig})

train(compose_cfg(*TINY, *sys.argv[1:]), callbacks=[SignalAt()])
"""


def _run_signalled(sig: str, step: int, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", _SIGNAL_AT_STEP.format(sig=sig, step=step), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run without interruption."""
    from tests.conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("reference")
    images = make_image_folder(tmp / "images")
    summary = train(compose_cfg(*TINY, *RUN, "data=folder", f"data.root={images}", f"run_dir={tmp / 'run'}"))
    assert summary["global_step"] == 2 * STEPS_PER_EPOCH
    return summary


@pytest.mark.slow
def test_sigkilled_run_resumes_from_last_ckpt_to_the_same_step_and_epoch(
    tmp_path, image_folder, uninterrupted
):
    data = ("data=folder", f"data.root={image_folder}")
    killed = _run_signalled("SIGKILL", 5, *RUN, *data, f"run_dir={tmp_path / 'runs' / 'killed'}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "runs" / "killed" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert (state["epoch"], state["global_step"]) == (0, 4), "last.ckpt of step 4, mid-epoch 0"
    assert not (tmp_path / "runs" / "killed" / "summary.json").exists()

    resumed = train(
        compose_cfg(
            *TINY,
            *RUN,
            *data,
            "ckpt_path=last",
            f"checkpoint.runs_root={tmp_path / 'runs'}",
            f"run_dir={tmp_path / 'runs' / 'resumed'}",
        )
    )
    assert resumed["global_step"] == uninterrupted["global_step"] == 18
    assert resumed["epochs"] == uninterrupted["epochs"] == 2


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(tmp_path, image_folder, uninterrupted):
    data = ("data=folder", f"data.root={image_folder}", "data.batch_size=2", "trainer.max_epochs=2")
    run_dir = tmp_path / "term"
    proc = _run_signalled("SIGTERM", 5, *data, f"run_dir={run_dir}")  # no step checkpoints
    assert proc.returncode == SIGTERM_EXIT_CODE, proc.stderr[-3000:]
    assert "stopped by SIGTERM at step 5; resume with ckpt_path=" in proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["global_step"] == 5
    state = torch.load(summary["resume_checkpoint"], map_location="cpu", weights_only=False)
    assert (state["epoch"], state["global_step"]) == (0, 5)
    assert state["optimizer_states"] and state["loops"]["fit_loop"]["epoch_loop.batch_progress"]

    resumed = train(
        compose_cfg(*TINY, *data, f"ckpt_path={run_dir}/checkpoints/last.ckpt", f"run_dir={tmp_path / 'r'}")
    )
    assert (resumed["epochs"], resumed["global_step"]) == (
        uninterrupted["epochs"],
        uninterrupted["global_step"],
    )


# A process that writes a checkpoint, then is SIGKILLed half-way through writing the next one.
_KILL_DURING_SAVE = """
import io, os, signal, sys, torch
from b4transfer.checkpointing import AtomicCheckpointIO

class NaiveIO:  # what a plain torch.save(checkpoint, path) does
    def save_checkpoint(self, checkpoint, path):
        torch.save(checkpoint, path)

path, writer = sys.argv[1:]
ckpt_io = AtomicCheckpointIO() if writer == "atomic" else NaiveIO()
ckpt_io.save_checkpoint({"step": 1, "w": torch.ones(100_000)}, path)
real_save = torch.save

def dies_half_way(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dies_half_way
ckpt_io.save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)
"""


def _kill_during_save(path: Path, writer: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_SAVE, str(path), writer],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_kill_during_an_atomic_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    _kill_during_save(path, "atomic")
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(100_000))


def test_the_same_kill_corrupts_a_plain_torch_save(tmp_path):
    """The check above can fail: writing in place, the same kill leaves a truncated, unreadable file."""
    path = tmp_path / "last.ckpt"
    _kill_during_save(path, "naive")
    with pytest.raises(Exception):  # noqa: B017 - any load error: the file is corrupt
        torch.load(path, weights_only=True)


def test_find_last_checkpoint_picks_the_newest_run_and_skips_the_current_one(tmp_path):
    paths = []
    for name in ("2026-01-01/10-00", "2026-01-02/09-00", "2026-01-01/11-00"):
        p = tmp_path / name / "checkpoints" / "last.ckpt"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        paths.append(p)
        time.sleep(0.01)
    assert find_last_checkpoint(tmp_path) == paths[-1]
    assert find_last_checkpoint(tmp_path, exclude=tmp_path / "2026-01-01/11-00") == paths[1]


def test_ckpt_path_last_without_runs_says_where_it_looked(tiny_cfg, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"ckpt_path=last: no checkpoints/last.ckpt under checkpoint.runs_root="
    ):
        train(tiny_cfg("ckpt_path=last", f"checkpoint.runs_root={tmp_path / 'empty'}"))


def test_step_interval_must_be_a_positive_integer():
    assert step_checkpoint(Path("x"), None) is None
    with pytest.raises(
        ValueError, match="checkpoint.every_n_train_steps must be a positive integer or null, got 0"
    ):
        step_checkpoint(Path("x"), 0)


def test_a_requeued_slurm_job_continues_its_own_run_in_a_subdirectory(tiny_cfg, tmp_path, monkeypatch):
    first = train(tiny_cfg())
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = train(tiny_cfg("trainer.max_epochs=2"))  # the same command, the same run directory
    assert again["global_step"] == 2 * first["global_step"] and again["epochs"] == 2
    assert (tmp_path / "run" / "requeue-1" / "summary.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 1, "first run untouched"
