"""Batch-job logs: with stdout not a terminal a run prints one plain line per epoch; on a terminal the bar."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from tests.conftest import TINY, compose_cfg

from b4transfer.modes import train
from b4transfer.training import callbacks
from b4transfer.training.callbacks import EpochLines
from b4transfer.training.trainer import build_trainer

ROOT = Path(__file__).resolve().parents[1]
CLOSING = re.compile(r"^Done in [\d.]+ s: best val/acc1 (\S+) at epoch (\d)/3 \((.+)\)\.$")
LINE_2 = re.compile(r"^epoch (\d+)/2  train/acc1 (\S+) train/loss (\S+)  ")
LINE = re.compile(
    r"^epoch (\d+)/3  train/acc1 \S+ train/loss \S+  val/acc1 [\d.]+ val/loss [\d.]+  "
    r"[\d.]+ img/s  ETA \d\d:\d\d$"
)


def test_a_run_with_stdout_not_a_terminal_prints_one_line_per_epoch(tiny_cfg, capsys, caplog, tmp_path):
    with caplog.at_level("INFO", logger="b4transfer.modes.train"):
        summary = train(tiny_cfg("trainer.max_epochs=3", "trainer.enable_progress_bar=true"))
    lines = [m for m in map(LINE.match, capsys.readouterr().out.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [1, 2, 3]
    assert lines[-1].group(0).endswith("ETA 00:00")
    # the closing lines: the best metric, its epoch as printed above (= the checkpoint's name), the export
    done, where = [r.getMessage() for r in caplog.records if r.name == "b4transfer.modes.train"][-2:]
    best = CLOSING.match(done)
    assert best, done
    assert float(best.group(1)) == pytest.approx(summary["best_score"], rel=1e-3)
    assert best.group(3) == summary["best_checkpoint"]
    assert Path(best.group(3)).name == f"best-epoch{int(best.group(2)):03d}.ckpt"
    printed = next(m.group(0) for m in lines if int(m.group(1)) == int(best.group(2)))
    assert f"val/acc1 {summary['best_score']:.4g} " in printed
    assert where == f"Export: {tmp_path / 'run' / 'export'}   Run directory: {tmp_path / 'run'}"


def test_a_cli_run_redirected_to_a_file_shows_the_epochs(tmp_path, image_folder):
    log = tmp_path / "job.out"
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *TINY, "trainer.max_epochs=3",
             "trainer.enable_progress_bar=true", "data=folder", f"data.root={image_folder}",
             f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=tmp_path, stdout=out, stderr=subprocess.PIPE, text=True, timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [line for line in log.read_text().splitlines() if LINE.match(line)]
    assert len(epochs) == 3, log.read_text()[-3000:]
    done, where = log.read_text().splitlines()[-2:]
    assert " - Done in " in done and " best val/acc1 " in done, done  # the last lines, in the job's log
    assert where.endswith(f"Run directory: {tmp_path / 'run'}"), where


def test_the_terminal_keeps_the_bar_and_enable_progress_bar_false_silences_both(tmp_path, monkeypatch):
    cfg = compose_cfg(f"run_dir={tmp_path}", "trainer.enable_progress_bar=true")
    assert isinstance(build_trainer(cfg, tmp_path).progress_bar_callback, EpochLines)
    monkeypatch.setattr(callbacks, "stdout_is_terminal", lambda: True)
    assert isinstance(build_trainer(cfg, tmp_path).progress_bar_callback, (RichProgressBar, TQDMProgressBar))
    monkeypatch.undo()
    assert build_trainer(compose_cfg(f"run_dir={tmp_path}", "trainer.enable_progress_bar=false"),
                         tmp_path).progress_bar_callback is None


def test_the_line_reads_the_metrics_throughput_and_time_left():
    class Trainer:
        progress_bar_metrics = {"train/loss": 0.9, "val/map": 0.25, "val/loss": 1.5, "lr": 0.001}
        callback_metrics = {"train/loss_epoch": torch.tensor(0.51234), "train/loss": torch.tensor(0.9)}
        max_epochs, current_epoch = 10, 2

    bar = EpochLines()
    bar._epoch_start, bar._train_end, bar._images, bar._epoch_seconds = 0.0, 2.0, 100, [30.0, 30.0, 30.0]
    assert bar.line(Trainer()) == (  # train/loss: the epoch's mean, not the last batch's 0.9
        "epoch 3/10  train/loss 0.5123  val/loss 1.5 val/map 0.25  lr 0.001  50.0 img/s  ETA 03:30"
    )


class BatchSizes(Callback):
    """The size of every training batch, by epoch."""

    def __init__(self) -> None:
        self.sizes: dict[int, list[int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.sizes.setdefault(trainer.current_epoch, []).append(len(batch[0]))


def test_the_line_shows_each_training_metric_s_epoch_mean_not_its_last_batch(tiny_cfg, tmp_path, capsys):
    sizes = BatchSizes()
    train(tiny_cfg("trainer.max_epochs=2", "trainer.enable_progress_bar=true", "data.batch_size=4"),
          callbacks=[sizes])
    lines = [m for m in map(LINE_2.match, capsys.readouterr().out.splitlines()) if m]
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for m in lines:
        epoch = int(m.group(1)) - 1
        steps = [r for r in rows if r["train/loss"] and int(r["epoch"]) == epoch]
        weights = sizes.sizes[epoch]
        assert len(steps) == len(weights) >= 3
        for key, shown in (("train/loss", float(m.group(3))), ("train/acc1", float(m.group(2)))):
            values = [float(r[key]) for r in steps]
            mean = sum(w * v for w, v in zip(weights, values)) / sum(weights)
            assert shown == pytest.approx(mean, rel=1e-3, abs=1e-4), (key, values, weights)
        assert float(m.group(3)) != pytest.approx(float(steps[-1]["train/loss"]), rel=1e-3)
    assert [int(m.group(1)) for m in lines] == [1, 2]
