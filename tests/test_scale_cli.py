"""From the command line: bf16-mixed, CPU DDP (one run directory), multirun sweeps with DDP, Optuna, SLURM."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from tests.conftest import TINY
from tests.test_cli import _ok, cli

from b4transfer.cli.entry import config_dir

DDP = ("strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _metric_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _runs(root: Path) -> list[Path]:
    """Every run directory under ``root`` (a directory holding a summary.json or a metrics.csv)."""
    return sorted({p.parent for p in [*root.rglob("summary.json"), *root.rglob("metrics.csv")]})


@pytest.mark.slow
def test_bf16_mixed_trains_from_the_cli(tmp_path, image_folder):
    run = tmp_path / "bf16"
    proc = _ok(
        cli(
            *TINY,
            "data=folder",
            f"data.root={image_folder}",
            "precision=bf16-mixed",
            f"hydra.run.dir={run}",
            cwd=tmp_path,
        )
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "bf16-mixed" and summary["global_step"] == 3
    assert "8 images per optimizer step" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cpu_ddp_run_writes_one_run_directory(tmp_path, image_folder):
    run = tmp_path / "ddp"
    _ok(cli(*TINY, *DDP, "data=folder", f"data.root={image_folder}", f"hydra.run.dir={run}", cwd=tmp_path))
    assert _runs(tmp_path) == [run], "no second directory from rank 1"
    assert len(list(tmp_path.rglob("metrics.csv"))) == 1
    assert len(list(tmp_path.rglob("export/model.safetensors"))) == 1  # (export/backbone/ holds one too)
    assert (run / "export" / "config.json").is_file()
    assert len(list(tmp_path.rglob(".hydra"))) == 1, "rank 1 writes no Hydra record of its own"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["batch"]["devices"] == 2 and summary["batch"]["global_batch_size"] == 16
    # 18 training images, 8 per rank: 2 steps per epoch (a single process would take 3)
    assert summary["global_step"] == 2
    assert any(r.get("val/acc1") for r in _metric_rows(run / "metrics.csv"))


@pytest.mark.slow
def test_multirun_of_two_learning_rates_with_ddp(tmp_path, image_folder):
    sweep = tmp_path / "sweep"
    _ok(
        cli(
            "-m",
            *TINY,
            *DDP,
            "data=folder",
            f"data.root={image_folder}",
            "optim.lr=0.001,0.01",
            f"hydra.sweep.dir={sweep}",
            cwd=tmp_path,
        )
    )
    assert _runs(tmp_path) == [sweep / "0", sweep / "1"], "one directory per job; the ranks share it"
    assert len(list(tmp_path.rglob("multirun.yaml"))) == 1, "rank 1 started no sweep of its own"
    lrs = [json.loads((sweep / j / "summary.json").read_text())["batch"]["lr"] for j in ("0", "1")]
    assert lrs == [0.001, 0.01]
    for job in ("0", "1"):
        assert (sweep / job / "export" / "model.safetensors").is_file()
        assert any(r.get("val/acc1") for r in _metric_rows(sweep / job / "metrics.csv"))
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _has("hydra_plugins.hydra_optuna_sweeper"), reason="pip install 'b4transfer[sweep]'")
def test_optuna_search_runs_two_trials_and_reports_the_best(tmp_path, image_folder):
    sweep = tmp_path / "optuna"
    _ok(
        cli(
            *TINY,
            "data=folder",
            f"data.root={image_folder}",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            f"hydra.sweep.dir={sweep}",
            cwd=tmp_path,
        )
    )
    trials = [json.loads((sweep / j / "summary.json").read_text()) for j in ("0", "1")]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(t["best_score"] for t in trials))
    # the search space minus what the command line fixed (scheduler=none)
    assert {"optim.lr", "optim.weight_decay", "data.augment.color_jitter"} <= set(result["best_params"])
    overrides = [yaml.safe_load((sweep / j / ".hydra" / "overrides.yaml").read_text()) for j in ("0", "1")]
    assert overrides[0] != overrides[1] and all(
        any(o.startswith("optim.lr=") for o in ov) for ov in overrides
    )


@pytest.mark.skipif(
    not _has("hydra_plugins.hydra_submitit_launcher"), reason="pip install 'b4transfer[slurm]'"
)
def test_slurm_launcher_composes_without_submitting(tmp_path):
    proc = _ok(cli("--cfg", "job", "hydra/launcher=slurm", "trainer=multi_node", cwd=tmp_path, timeout=60))
    assert "num_nodes: 2" in proc.stdout and "name: ddp" in proc.stdout
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "trainer=multi_node", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 8)
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0
