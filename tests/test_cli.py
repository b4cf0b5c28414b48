"""The command line, as a user runs it: ``python run.py ...`` in a subprocess; what the CLI answers
before Hydra starts (``--help``, ``--version``, mistyped keys) in-process through ``cli.before_hydra``."""

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
    assert not (tmp_path / "run").exists()  # the refused run's directory is gone


def test_offline_audit_refuses_before_generating_the_demo_and_leaves_no_run_dir(tmp_path):
    """``mode=audit`` generated the demo set before it built the backbone; a refused run left
    ``outputs/<date>/<time>/`` behind. An earlier run beside it stays as it was."""
    earlier = tmp_path / "outputs" / "2020-01-01" / "00-00-00"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text("{}\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = cli("mode=audit", "model=test_efficientnet", "model.pretrained=true", cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "b4transfer: error: Pretrained weights for model.name='test_efficientnet'" in proc.stderr
    assert not (tmp_path / "cache").exists()  # B4TRANSFER_CACHE: no demo set was written
    assert [p.relative_to(tmp_path).as_posix() for p in sorted((tmp_path / "outputs").rglob("*"))] == [
        "outputs/2020-01-01", "outputs/2020-01-01/00-00-00", "outputs/2020-01-01/00-00-00/summary.json"
    ]


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


def test_unknown_key_is_one_line_naming_the_closest_key_exit_2(tmp_path):
    proc = cli("data.batchsize=4", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("b4transfer: error: data.batchsize=4: unknown key 'data.batchsize'; closest: "
                           "data.batch_size, ")
    assert line.endswith("Fix: correct it")  # data takes no new key (b4transfer.settings): no +data.batchsize
    assert not (tmp_path / "outputs").exists()


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

    from b4transfer.cli.entry import share_cores_politely

    env: dict[str, str] = {}
    share_cores_politely(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(mine)
        share_cores_politely(env)
        assert env == mine
    # as run: main() sets it before torch is imported (torch reads it once, when it loads)
    code = (
        "import os, sys; from unittest import mock; import b4transfer.cli.entry as c; "
        "assert 'torch' not in sys.modules; "
        "mock.patch.object(c.hydra, 'main', lambda **k: (lambda f: (lambda: None))).start(); "
        "c.main(); print(os.environ['OMP_WAIT_POLICY'])"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "PASSIVE", out.stderr


# ------------------------------------------------ answered before Hydra starts (in-process)
def _before_hydra(capsys, *argv: str) -> tuple[int | str | None, str, str]:
    """``cli.before_hydra(argv)``: (exit status, or "done" / "hydra" when it returned), stdout, stderr."""
    from b4transfer.cli.entry import before_hydra

    try:
        status = "done" if before_hydra(list(argv)) else "hydra"
    except SystemExit as exit_:
        status = exit_.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_help_lists_tasks_modes_data_choices_and_keys_but_not_the_shared_pieces(capsys, monkeypatch):
    from b4transfer import modes, tasks
    from b4transfer.cli.entry import config_dir
    from b4transfer.cli.help import DOCS, KEYS, MODE_HELP, key_help

    monkeypatch.setitem(tasks._REGISTRY, "toy_regression", object())  # a plug-in's task is listed too
    for flag in ("--help", "-h"):
        status, text, _ = _before_hydra(capsys, flag, "data=folder")
        assert status == "done"
        assert "Hydra" not in text.splitlines()[0] and "== Config ==" not in text  # not Hydra's app help
        tasks_block = text.split("Tasks (task=...):\n")[1].split("\n\n")[0]
        assert [line.split()[0] for line in tasks_block.splitlines()] == tasks.names()
        assert "toy_regression  (a registered task)" in tasks_block
        modes_block = text.split("Modes (mode=...):\n")[1].split("\n\n")[0]
        assert [line.split()[0] for line in modes_block.splitlines()] == list(modes._MODES)
        data_line = next(line for line in text.splitlines() if line.strip().startswith("data="))
        assert data_line.split(maxsplit=1)[1].split(", ") == [
            "coco", "csv", "demo*", "demo_detection", "demo_segmentation", "folder", "seg_folder", "voc_seg",
            "yolo",
        ]
        assert "_common" not in text and "specialize" not in text and "task_data" not in text
        assert "  data.root                required: data.root=/path/to/images" in text
        assert "docs/get-started.md" in text and "--hydra-help" in text
    assert set(MODE_HELP) == set(modes._MODES)
    assert all(comment for _, comment in key_help(Path(config_dir()))), key_help(Path(config_dir()))
    assert len(KEYS) == len(key_help(Path(config_dir())))
    assert all((ROOT / page).is_file() for page, _ in DOCS), DOCS


def test_version_is_b4transfer_s(capsys):
    import b4transfer

    for flag in ("--version", "-V"):
        assert _before_hydra(capsys, flag) == ("done", f"b4transfer {b4transfer.__version__}\n", "")


@pytest.mark.parametrize(
    "override, closest",
    [
        ("data.rot=3", "closest: data.source.root"),  # the demo data's root
        ("trainer.max_epoch=3", "closest: trainer.max_epochs"),
        ("optim.lrr=1", "closest: optim.lr"),
        ("dta.root=/data", "closest: data.source.root"),
        ("hydra.run.dri=x", "closest: hydra.run.dir"),
    ],
)
def test_a_mistyped_key_is_one_line_with_the_closest_keys_and_the_fix(capsys, override, closest):
    status, out, err = _before_hydra(capsys, "model=test_efficientnet", override)
    key = override.split("=")[0]
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"b4transfer: error: {override}: unknown key '{key}'; ")
    # +key=value is offered only where a new key is taken (trainer, optim, hydra ...; not data: the schema)
    assert closest in err and (f"+{override}" in err) == (key.split(".")[0] in ("trainer", "optim", "hydra"))


def test_an_unknown_group_choice_names_the_choices_closest_first(capsys):
    status, _, err = _before_hydra(capsys, "data=foldr", "optim.lr=0.1")
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("b4transfer: error: data=foldr: no such data config; choose one of folder, ")
    assert "_common" not in err and "csv" in err
    # a sweep: every value of a group is checked; both mistakes in the one line
    status, _, err = _before_hydra(capsys, "-m", "data=folder,cvs", "optim.lrr=1,2")
    assert status == 2 and err.count("\n") == 1
    assert "data=cvs: no such data config; choose one of csv, " in err
    assert "optim.lrr=1,2: unknown key 'optim.lrr'; closest: optim.lr." in err


def test_good_overrides_and_hydra_s_own_reports_go_on_to_hydra(capsys, monkeypatch):
    assert _before_hydra(capsys, "data=folder", "+data.extra=1", "-m", "optim.lr=0.1,0.2")[0] == "hydra"
    assert _before_hydra(capsys, "--cfg", "job", "data=folder", "data.root=x", "--resolve")[0] == "hydra"
    assert _before_hydra(capsys, "~data.rot")[0] == "hydra"  # not a typo of a key: Hydra says it
    assert _before_hydra(capsys, "--hydra-help")[0] == "hydra"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # Hydra's report, with its traceback
    assert _before_hydra(capsys, "data.rot=3")[0] == "hydra"


# ------------------------------------------------ weights first, before any data (in-process)
@pytest.mark.parametrize(
    "overrides",
    [
        ["mode=train"],
        ["mode=train", "seeds=[0,1]"],
        ["mode=lr_find"],
        ["mode=audit"],
        ["mode=embed", "predict.input=."],
        ["task=detection", "mode=audit"],
        ["task=segmentation"],
    ],
    ids=" ".join,
)
def test_each_mode_building_the_backbone_checks_the_weights_before_any_data(tmp_path, monkeypatch, overrides):
    from tests.conftest import compose_cfg

    import b4transfer.data.sources as sources
    import b4transfer.tasks.detection.data.demo as demo_detection
    import b4transfer.tasks.segmentation.data.demo as demo_segmentation
    from b4transfer.backbone import PretrainedWeightsUnavailable
    from b4transfer.modes import run

    def generated(*args, **kwargs):
        raise AssertionError("demo data generated before the weights check")

    for module, name in ((sources, "ensure_demo"), (demo_detection, "ensure_demo_detection"),
                         (demo_segmentation, "ensure_demo_masks")):
        monkeypatch.setattr(module, name, generated)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached, HF_HUB_OFFLINE=1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        "model=test_efficientnet", "model.pretrained=true", f"run_dir={tmp_path / 'run'}", *overrides
    )
    with pytest.raises(PretrainedWeightsUnavailable, match="model.pretrained=false"):
        run(cfg)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------ a refused run's directory (in-process)
def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _hydra_writes(run_dir: Path, *extra: str) -> None:
    """What Hydra and prepare_run_dir write before a refusal, plus ``extra`` files."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run_dir / ".hydra" / name).write_text("x: 1\n")
    for name in ("cli.log", "config_resolved.yaml", *extra):
        (run_dir / name).write_text("x\n")


OURS = {".hydra", "cli.log", "config_resolved.yaml"}


def test_a_refused_run_removes_only_the_directories_it_created(tmp_path, monkeypatch):
    from b4transfer.cli import cleanup as run_cleanup

    monkeypatch.setattr(run_cleanup, "_BEFORE", {})
    earlier = tmp_path / "outputs" / "2020-01-01" / "00-00-00"
    _hydra_writes(earlier, "summary.json")
    fresh = tmp_path / "outputs" / "2020-01-02" / "10-00-00"  # its date dir is new too
    beside = tmp_path / "outputs" / "2020-01-01" / "11-00-00"  # its date dir holds the earlier run
    for run_dir in (fresh, beside):
        run_cleanup.remember(run_dir)
        _hydra_writes(run_dir)
        run_cleanup.forget(run_dir, OURS)
    kept = ["2020-01-01", "2020-01-01/00-00-00", *(f"2020-01-01/00-00-00/{f}" for f in _files(earlier))]
    assert _files(tmp_path / "outputs") == kept  # 2020-01-02 (created by the refused run) is gone

    # pointed at a directory of the user's: it keeps what it held, loses what the run added
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    run_cleanup.remember(mine)
    _hydra_writes(mine)
    run_cleanup.forget(mine, OURS)
    assert _files(mine) == ["notes.txt"]

    # a run that wrote more than the record (a finished run, an audit report) is kept whole
    for run_dir in (tmp_path / "new" / "run", mine):
        run_cleanup.remember(run_dir)
        _hydra_writes(run_dir, "audit.md")
        run_cleanup.forget(run_dir, OURS)
        assert {".hydra", "cli.log", "config_resolved.yaml", "audit.md"} <= set(os.listdir(run_dir))


def test_a_refused_sweep_job_removes_its_job_dir_only(tmp_path, monkeypatch):
    from b4transfer.cli import cleanup as run_cleanup

    monkeypatch.setattr(run_cleanup, "_BEFORE", {})
    sweep = tmp_path / "multirun" / "2020-01-01" / "10-00-00"
    run_cleanup.remember(sweep)
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("x\n")
    _hydra_writes(sweep / "0", "summary.json")  # job 0 ran
    _hydra_writes(sweep / "1")  # job 1 was refused
    run_cleanup.forget(sweep / "1", OURS)
    assert sorted(os.listdir(sweep)) == ["0", "multirun.yaml"]
    run_cleanup.forget(sweep / "0", OURS)  # holds a run: kept
    assert sorted(os.listdir(sweep)) == ["0", "multirun.yaml"]

    other = tmp_path / "multirun" / "2020-01-01" / "11-00-00"  # its first job refused: nothing left
    run_cleanup.remember(other)
    other.mkdir()
    (other / "multirun.yaml").write_text("x\n")
    _hydra_writes(other / "0")
    run_cleanup.forget(other / "0", OURS)
    kept = ["2020-01-01", "2020-01-01/10-00-00", *(f"2020-01-01/10-00-00/{f}" for f in _files(sweep))]
    assert _files(tmp_path / "multirun") == kept
