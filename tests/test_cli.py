"""The command line, as a user runs it: ``python run.py ...`` in a subprocess."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
from safetensors.torch import save_file
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    # The demo cache goes to the test's tmp dir, never the user's home.
    full_env = {**os.environ, "B4TRANSFER_CACHE": str(cwd / "cache"), **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_train_then_predict_and_embed_with_a_local_weights_file(tmp_path, image_folder):
    weights = tmp_path / "pretrained.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), weights)
    common = [*TINY, "data=folder", f"data.root={image_folder}", f"model.weights={weights}"]
    _ok(cli(*common, f"hydra.run.dir={tmp_path / 'train'}", cwd=tmp_path))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (tmp_path / "train" / "export" / "model.safetensors").is_file()

    _ok(
        cli(
            *common,
            "mode=predict",
            f"ckpt_path={ckpt}",
            f"predict.input={image_folder}",
            f"hydra.run.dir={tmp_path / 'predict'}",
            cwd=tmp_path,
        )
    )
    with open(tmp_path / "predict" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    assert {"path", "label1", "prob1", "label3", "prob3"} <= set(rows[0])
    assert all(r["label1"] in {"red", "green", "blue"} for r in rows)
    assert all(abs(sum(float(r[f"prob{k}"]) for k in (1, 2, 3)) - 1) < 1e-4 for r in rows)

    _ok(
        cli(
            *common,
            "mode=embed",
            f"ckpt_path={ckpt}",
            f"predict.input={image_folder / 'red'}",
            f"hydra.run.dir={tmp_path / 'embed'}",
            cwd=tmp_path,
        )
    )
    emb = np.load(tmp_path / "embed" / "embeddings.npy")
    assert emb.shape == (8, 256) and np.isfinite(emb).all()
    with open(tmp_path / "embed" / "embeddings.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in index] == [f"{i:03d}.png" for i in range(8)]


def test_pretrained_without_network_fails_fast_with_the_three_ways_out(tmp_path):
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
    }
    start = time.perf_counter()
    proc = cli(
        "model.pretrained=true",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode != 0
    # fast = no network wait: within a few seconds of a run that fails at once for another reason (both
    # pay the imports, which take 5-12 s on a loaded 2-core machine)
    start = time.perf_counter()
    nowhere = f"data.root={tmp_path / 'nowhere'}"
    cli("data=folder", nowhere, "model.pretrained=false", cwd=tmp_path, env=env, timeout=60)
    baseline = time.perf_counter() - start
    assert elapsed < baseline + 5, f"took {elapsed:.1f}s, a run failing at once {baseline:.1f}s"
    message = proc.stderr + proc.stdout
    for way_out in ("model.weights=", "model.pretrained=false", "cache"):
        assert way_out in message, message[-3000:]


def test_bad_data_source_is_one_message_exit_2(tmp_path):
    """Errors raised inside Hydra's instantiate (the data sources) read like every other user error."""
    proc = cli("data=folder", f"data.root={tmp_path / 'nowhere'}", "model.pretrained=false", cwd=tmp_path,
               timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"b4transfer: error: data.root='{tmp_path / 'nowhere'}': folder" in proc.stderr
    assert "does not exist. Fix:" in proc.stderr and "Error in call to target" not in proc.stderr


def test_lightning_misconfiguration_is_one_message_exit_2(tmp_path):
    proc = cli(*TINY, "trainer.max_epochs=-3", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "b4transfer: error: `max_epochs` must be a non-negative integer or -1. You passed in -3." in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_unknown_key_fails_with_hydra_message(tmp_path):
    proc = cli("data.batchsize=4", cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "batchsize" in proc.stderr


def test_console_script_prints_the_composed_config(tmp_path):
    exe = shutil.which("b4transfer")
    if exe is None:
        pytest.skip("package not installed with its console script")
    proc = subprocess.run(
        [exe, "--cfg", "job", "model=test_efficientnet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: test_efficientnet" in proc.stdout and "mode: train" in proc.stdout


def test_summary_json_is_written_by_the_cli(tmp_path, image_folder):
    _ok(
        cli(
            *TINY, "data=folder", f"data.root={image_folder}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
        )
    )
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["epochs"] == 1 and (tmp_path / "r" / ".hydra" / "config.yaml").is_file()


def test_openmp_threads_wait_passively_unless_the_user_chose_a_policy():
    """Two runs side by side on a small machine: spinning OpenMP threads steal the cores their partners
    need (BENCHMARKS.md "side by side"), so the CLI sets OMP_WAIT_POLICY=PASSIVE before torch loads,
    and leaves a user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT alone."""
    import sys

    from b4transfer.cli import share_cores_politely

    env: dict[str, str] = {}
    share_cores_politely(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(mine)
        share_cores_politely(env)
        assert env == mine
    # as run: main() sets it before torch is imported (torch reads it once, when it loads)
    code = (
        "import os, sys; from unittest import mock; import b4transfer.cli as c; "
        "assert 'torch' not in sys.modules; "
        "mock.patch.object(c.hydra, 'main', lambda **k: (lambda f: (lambda: None))).start(); "
        "c.main(); print(os.environ['OMP_WAIT_POLICY'])"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "PASSIVE", out.stderr
