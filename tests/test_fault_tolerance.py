"""Fault tolerance: atomic checkpoint writes, SIGKILL/SIGTERM mid-epoch + resume, ckpt_path=last, requeue."""

from __future__ import annotations

import functools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tests.conftest import TINY, compose_cfg

from b4transfer import modes
from b4transfer.errors import UserError
from b4transfer.modes import train
from b4transfer.training.checkpointing import (
    SIGTERM_EXIT_CODE,
    BestCheckpoint,
    best_weights_only,
    find_last_checkpoint,
    step_checkpoint,
)

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
from b4transfer.training.checkpointing import AtomicCheckpointIO

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


def test_checkpoints_are_named_by_the_printed_epoch_and_follow_the_umask(tiny_cfg, tmp_path, capsys):
    old = os.umask(0o027)
    try:  # calibration rewrites best-*.ckpt (it stores the temperature there); the export writes 3 files
        summary = train(tiny_cfg("trainer.max_epochs=2", "trainer.enable_progress_bar=true"))
    finally:
        os.umask(old)
    best = Path(summary["best_checkpoint"])
    saved = torch.load(best, map_location="cpu", weights_only=True)
    assert best.name == f"best-epoch{saved['epoch'] + 1:03d}.ckpt"  # Lightning's epoch counts from 0
    assert saved["hyper_parameters"]["calibration"]
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"epoch {saved['epoch'] + 1}/2  ") for line in lines)
    exported = [p for p in (tmp_path / "run" / "export").rglob("*") if p.is_file()]  # backbone/ too
    files = [*best.parent.glob("*.ckpt"), *exported]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert len(modes) >= 5 and set(modes.values()) == {"0o640"}, modes  # 0o666 less the umask, as last.ckpt


def test_a_weights_only_best_checkpoint_serves_every_mode_but_resume(tiny_cfg, tmp_path, image_folder):
    summary = train(tiny_cfg())  # checkpoint.best_weights_only=true by default
    best, last = Path(summary["best_checkpoint"]), Path(summary["last_checkpoint"])
    kept = torch.load(best, map_location="cpu", weights_only=True)
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & set(kept)
    assert best.stat().st_size < last.stat().st_size / 2
    run = functools.partial(_mode_from, tiny_cfg, best, tmp_path)
    assert run("validate")["metrics"]["val/acc1"] == pytest.approx(summary["metrics"]["val/acc1"])
    assert run("test")["metrics"]
    assert run("predict", f"predict.input={image_folder / 'red'}")["images"] == 8
    run("export", "export.format=[timm,onnx]")
    assert {"model.safetensors", "model.onnx"} <= {p.name for p in (tmp_path / "export" / "export").iterdir()}
    fix = r"holds only the weights .* Fix: resume from the run's checkpoints/last.ckpt"
    with pytest.raises(UserError, match=fix):
        train(tiny_cfg(f"ckpt_path={best}", f"run_dir={tmp_path / 'resume'}"))
    assert not (tmp_path / "resume" / "checkpoints").exists()


def _mode_from(tiny_cfg, ckpt: Path, tmp_path: Path, mode: str, *overrides: str) -> dict:
    return modes.run(tiny_cfg(f"mode={mode}", f"ckpt_path={ckpt}", f"run_dir={tmp_path / mode}", *overrides))


def test_the_best_checkpoint_keeps_lightning_s_state_key_so_older_checkpoints_resume_alike(tmp_path):
    args = {"monitor": "val/acc1", "mode": "max", "save_top_k": 1}
    assert BestCheckpoint(tmp_path, **args).state_key == ModelCheckpoint(dirpath=tmp_path, **args).state_key
    name = BestCheckpoint(tmp_path, **args).format_checkpoint_name({"epoch": torch.tensor(9)})
    assert Path(name).name == "best-epoch010.ckpt"  # the 10th epoch, "epoch 10/N" on the console


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_best_weights_only_must_be_a_boolean(value):
    match = rf"checkpoint.best_weights_only must be true or false, got {value!r}. Fix: "
    with pytest.raises(UserError, match=match):
        best_weights_only(value)
