"""What used to crash or show a traceback now gives one clear message (or the right result), and the
command line shows user errors as one line but keeps the traceback of a bug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import TINY, compose_cfg, make_image_folder
from tests.detection_helpers import small_coco

from b4transfer.cli import entry as cli
from b4transfer.data.coco import read_coco
from b4transfer.errors import UserError
from b4transfer.modes import run

ROOT = Path(__file__).resolve().parents[1]
DET = (
    "task=detection",
    "data.source.image_size=64",
    "data.source.train_images=8",
    "data.source.val_images=4",
    "data.image_size=64",
    "head.fpn_channels=32",
    "trainer.limit_val_batches=1",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refusals")
    make_image_folder(root / "images", per_class=6, size=32)
    return root


def cls_cfg(root: Path, name: str, *extra: str):
    return compose_cfg(
        *TINY,
        "data=folder",
        f"data.root={root / 'images'}",
        "data.image_size=32",
        f"run_dir={root / name}",
        *extra,
    )


def det_cfg(root: Path, name: str, *extra: str):
    return compose_cfg(*TINY, *DET, f"data.source.root={root / 'demo'}", f"run_dir={root / name}", *extra)


@pytest.fixture(scope="module")
def checkpoints(root) -> dict[str, str]:
    return {
        "classification": run(cls_cfg(root, "cls"))["last_checkpoint"],
        "detection": run(det_cfg(root, "det"))["last_checkpoint"],  # RetinaNet
    }


def test_a_classification_checkpoint_with_detection_data_is_refused_clearly(root, checkpoints):
    cfg = det_cfg(root, "v1", "mode=validate", f"ckpt_path={checkpoints['classification']}")
    with pytest.raises(
        UserError,
        match=r"task=classification \(the checkpoint .* is a task=classification model\) "
        r"but the data source .* gives detection data\. Fix: use data=folder",
    ):
        run(cfg)


def test_a_detection_checkpoint_with_classification_data_is_refused_clearly(root, checkpoints):
    cfg = cls_cfg(root, "v2", "mode=validate", f"ckpt_path={checkpoints['detection']}")
    with pytest.raises(UserError, match=r"task=detection .* gives classification data\. Fix: use data=coco"):
        run(cfg)


def test_resuming_a_retinanet_checkpoint_as_fcos_is_refused_before_training(root, checkpoints):
    cfg = det_cfg(
        root, "fcos", f"ckpt_path={checkpoints['detection']}", "head.detector=fcos", "head.fpn_channels=64"
    )
    with pytest.raises(
        UserError,
        match=r"does not fit the configured model .*head.detector: 'retinanet' in the "
        r"checkpoint, 'fcos' now",
    ):
        run(cfg)
    assert not (root / "fcos" / "checkpoints").exists()


def test_resuming_from_a_file_that_is_not_a_checkpoint_is_refused(root):
    junk = root / "notes.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"is not a checkpoint \(it is a 16-byte text file\)"):
        run(cls_cfg(root, "junk", f"ckpt_path={junk}"))
    assert not (root / "junk" / "checkpoints").exists()


def test_resuming_a_classification_checkpoint_as_detection_is_refused(root, checkpoints):
    with pytest.raises(UserError, match=r"holds a task=classification model, but this run is task=detection"):
        run(det_cfg(root, "mixed", f"ckpt_path={checkpoints['classification']}"))


def test_predict_on_a_folder_of_unreadable_images_says_so(root, checkpoints):
    bad = root / "broken"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"not a png")
    cfg = cls_cfg(
        root, "p", "mode=predict", f"ckpt_path={checkpoints['classification']}", f"predict.input={bad}"
    )
    with pytest.raises(UserError, match=r"none of its 3 image\(s\) could be read .*0.png"):
        run(cfg)


def test_a_coco_category_id_given_as_a_list_is_named(tmp_path):
    path = small_coco(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = [7]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"annotation id 1 has category_id \[7\]; it must be one id"):
        read_coco(path, tmp_path / "train")


def test_a_last_training_batch_of_one_image_is_dropped_not_a_batchnorm_crash(tmp_path):
    # 7 training images per class x 3 = 21, batch 4: the last batch would hold one image, whose 1x1 map
    # at 32 px cannot be batch-normalised in train mode
    make_image_folder(tmp_path / "images", per_class=9, size=32)
    cfg = compose_cfg(
        *TINY,
        "data=folder",
        f"data.root={tmp_path / 'images'}",
        "data.image_size=32",
        "data.batch_size=4",
        "data.val_fraction=0.25",
        f"run_dir={tmp_path / 'run'}",
    )
    summary = run(cfg)
    assert summary["train_images"] == 21 and summary["global_step"] == 5


def test_gradual_with_detection_accepts_its_own_defaults(root):
    cfg = det_cfg(root, "gradual", "finetune=gradual", "trainer.limit_train_batches=1")
    assert list(cfg.finetune.unfreeze_at_epochs) == [1, 2, 3, 4, 5]
    assert run(cfg)["global_step"] == 1


def test_detection_lr_find_runs_over_the_detection_loss(root):
    summary = run(det_cfg(root, "lr", "mode=lr_find", "lr_find.num_training=4"))
    assert summary["task"] == "detection" and "suggested_lr" in summary


# ------------------------------------------------------------------------------------------- the CLI
def test_cli_prints_a_user_error_as_one_line_and_exit_2(monkeypatch, capsys, tiny_cfg):
    import b4transfer.modes

    def refuse(cfg):
        raise UserError("data.root='x' does not exist. Fix: pass a folder.")

    monkeypatch.setattr(b4transfer.modes, "run", refuse)
    with pytest.raises(SystemExit) as info:
        cli._main(tiny_cfg())
    assert info.value.code == 2
    assert "b4transfer: error: data.root='x' does not exist. Fix: pass a folder." in capsys.readouterr().err


@pytest.mark.parametrize(
    "bug", [ValueError("'NoneType' object is not iterable"), TypeError("unhashable type")]
)
def test_cli_keeps_the_traceback_of_a_bug(monkeypatch, tiny_cfg, bug):
    import b4transfer.modes

    def crash(cfg):
        raise bug

    monkeypatch.setattr(b4transfer.modes, "run", crash)
    with pytest.raises(type(bug)):
        cli._main(tiny_cfg())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_refused_run_leaves_the_earlier_run_byte_identical(tmp_path):
    earlier = tmp_path / "earlier"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / ".hydra" / "config.yaml").write_text("mode: train\nseed: 1\n")
    (earlier / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (earlier / "summary.json").write_text('{"mode": "train"}\n')
    (earlier / "run.log").write_text("the earlier run's log\n")
    before = _tree(earlier)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "model=test_efficientnet",
            "seed=7",
            f"hydra.run.dir={earlier}",
        ],
        cwd=tmp_path,
        env={**os.environ, "B4TRANSFER_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "already holds an earlier run (summary.json)" in proc.stderr and "Traceback" not in proc.stderr
    assert _tree(earlier) == before


def test_a_refused_sweep_leaves_the_earlier_sweep_byte_identical(tmp_path):
    earlier = tmp_path / "sweep"
    (earlier / "0" / ".hydra").mkdir(parents=True)
    (earlier / "multirun.yaml").write_text("hydra: {}\n")
    (earlier / "0" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (earlier / "0" / "summary.json").write_text('{"mode": "train"}\n')
    before = _tree(earlier)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", "model=test_efficientnet", "seed=1,2",
         f"hydra.sweep.dir={earlier}"],
        cwd=tmp_path, env={**os.environ, "B4TRANSFER_CACHE": str(tmp_path / "cache")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "already holds an earlier sweep (multirun.yaml)" in proc.stderr and "Traceback" not in proc.stderr
    assert _tree(earlier) == before
