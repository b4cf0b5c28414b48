"""Bad input and odd combinations (the red team's list, issue 24): each is refused before training in one
line that names the key, the value and the fix, or now gives the right result."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import lightning as L
import pytest
import timm
from omegaconf import OmegaConf
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer import tasks
from b4transfer.config import SEED_RANGE, check_seed
from b4transfer.errors import UserError
from b4transfer.modes import run
from b4transfer.training.finetuning import check_batch_of_one
from b4transfer.training.trackers import check_mlflow_store


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    make_image_folder(root / "images", per_class=6, size=32)
    return root


def cfg(root: Path, name: str, *extra: str, size: int = 32):
    return compose_cfg(
        *TINY, "data=folder", f"data.root={root / 'images'}", f"data.image_size={size}",
        f"run_dir={root / name}", *extra,
    )


@pytest.fixture(scope="module")
def checkpoint(root) -> str:
    return run(cfg(root, "trained", "trainer.limit_train_batches=1"))["last_checkpoint"]


# ------------------------------------------------------------------------- batch of one + BatchNorm
def test_batch_size_1_at_32_px_is_refused_before_training_not_a_batchnorm_crash(root):
    with pytest.raises(
        UserError,
        match=r"^data\.batch_size=1 at 32x32 px: BatchNorm layer backbone\.\S+ would normalise a 1x1 feature "
        r"map of one image \(1 value per channel\), which fails in training\. Fix: data\.batch_size>=2, "
        r"a larger data\.image_size \(e\.g\. 64\), or finetune\.bn=frozen",
    ):
        run(cfg(root, "bs1", "data.batch_size=1"))
    assert not (root / "bs1" / "checkpoints").exists()


@pytest.mark.parametrize("extra, size", [((), 64), (("finetune.bn=frozen",), 32)])
def test_batch_size_1_trains_where_batchnorm_sees_more_than_one_value(root, extra, size):
    summary = run(cfg(root, f"bs1-{size}", "data.batch_size=1", "trainer.limit_train_batches=2", *extra,
                      size=size))
    assert summary["global_step"] == 2


def _probe_module(size: int):
    """What check_batch_of_one reads of a module: its backbone and its training input size."""
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    data_config = {"train": {"input_size": (3, size, size)}}
    return type("Module", (), {"backbone": backbone, "data_config": data_config})


def test_a_training_split_of_one_image_is_refused_like_a_batch_of_one():
    config = OmegaConf.create({"data": {"batch_size": 8}, "finetune": {"bn": "train"}})
    module = _probe_module(32)
    with pytest.raises(UserError, match=r"^the training split holds 1 image at 32x32 px: BatchNorm layer "
                       r".*Fix: data\.batch_size>=2 with more training images"):
        check_batch_of_one(config, module, 1)
    check_batch_of_one(config, module, 2)  # two images: two values per channel
    check_batch_of_one(config, _probe_module(64), 1)  # a 2x2 map: four values
    linear_probe = {"_target_": "b4transfer.training.finetuning.LinearProbe", "bn": "train"}
    check_batch_of_one(OmegaConf.create({"data": {"batch_size": 1}, "finetune": linear_probe}), module, 1)
    assert module.backbone.training  # the probe leaves the modes as they were


# ------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("value", ["0", "-3", "true"])
def test_int8_calibration_images_below_1_is_refused_before_training(root, value):
    name = f"int8-{value}"
    with pytest.raises(UserError, match=rf"^export\.int8_calibration_images={value.capitalize()}: "
                       r"export\.format=onnx_int8 .* needs at least 1\. Fix: .*=64"):
        run(cfg(root, name, "export.format=onnx_int8", f"export.int8_calibration_images={value}"))
    assert not (root / name / "checkpoints").exists()


# -------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize(
    "override, message",
    [
        ("seeds=[-1,0]", r"^seeds=\[-1, 0\]: -1 is not a seed; a seed is a whole number from 0 to "
                         r"4294967295 \(2\*\*32 - 1\)\. Fix: e\.g\. seeds=\[0,1,2\]"),
        ("seed=-1", r"^seed=-1 is not a seed: a seed is a whole number from 0 to 4294967295 .*Fix: e\.g\."),
        ("seed=4294967296", r"^seed=4294967296 is not a seed"),
    ],
)
def test_seeds_outside_lightnings_range_are_refused_before_any_work(root, override, message):
    name = "seed-" + "".join(c for c in override if c.isalnum())
    with pytest.raises(UserError, match=message):
        run(cfg(root, name, override))
    assert not (root / name).exists()


def test_the_seed_range_is_lightnings():
    low, high = SEED_RANGE
    for seed in (low, high):
        check_seed(seed)
        assert L.seed_everything(seed, verbose=False) == seed
    for seed in (low - 1, high + 1):
        with pytest.raises(ValueError, match="not in bounds"):
            L.seed_everything(seed, verbose=False)
        with pytest.raises(UserError):
            check_seed(seed)


# ------------------------------------------------------------------------- monitor / early stopping
def test_early_stopping_on_a_metric_the_task_does_not_log_is_refused_before_training(root):
    with pytest.raises(
        UserError,
        match=r"^checkpoint\.monitor=val/miou is not a metric task=classification logs, so the best "
        r"checkpoint and early stopping would fail after the first epoch\. It logs: train/loss, .*val/acc1, "
        r".*val/acc_red\. Fix: checkpoint\.monitor=val/acc1",
    ):
        run(cfg(root, "es", "early_stopping.patience=1", "checkpoint.monitor=val/miou"))
    assert not (root / "es" / "checkpoints").exists()


def test_a_checkpoint_monitor_in_another_spelling_is_refused(root):
    with pytest.raises(
        UserError, match=r"^checkpoint\.monitor=val_loss is not a metric .* the best checkpoint would fail"
    ):
        run(cfg(root, "es2", "checkpoint.monitor=val_loss"))


SMALL = ("data.source.image_size=64", "data.source.train_images=4", "data.source.val_images=2")
SEG = ("task=segmentation", *SMALL, "head.fpn_channels=16", "head.seg_channels=16")
DET = ("task=detection", *SMALL, "head.fpn_channels=32")


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_each_task_declares_every_metric_it_logs(root, tmp_path, task):
    extra = {"classification": ("data=folder", f"data.root={root / 'images'}"),
             "segmentation": (*SEG, f"data.source.root={tmp_path / 'seg'}"),
             "detection": (*DET, f"data.source.root={tmp_path / 'det'}")}[task]
    summary = run(compose_cfg(*TINY, "trainer.limit_train_batches=1",
                              "trainer.limit_val_batches=1", *extra, f"run_dir={tmp_path / 'run'}"))
    declared = tasks.load_module(summary["last_checkpoint"]).logged_metric_names()
    logged = {k for k in summary["metrics"] if k.split("/")[0] in ("train", "val")}
    assert logged and logged <= set(declared), logged - set(declared)
    per_class = ("val/acc_", "val/ap_", "val/iou_", "val/dice_")  # a class absent from a batch: unlogged
    assert {n for n in declared if not n.startswith(per_class)} <= logged


# ------------------------------------------------------------------------------------------- MLflow
def test_an_mlflow_store_dir_that_is_a_file_is_refused_before_any_work(root):
    pytest.importorskip("mlflow")
    blocker = root / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(
        UserError,
        match=rf"^logger\.mlflow\.store_dir={blocker} cannot hold the MLflow store: {blocker} is a file, "
        r"not a directory\. Fix: point logger\.mlflow\.store_dir at a directory",
    ):
        run(cfg(root, "mlf", "logger=mlflow", f"logger.mlflow.store_dir={blocker}"))
    sqlite = f"sqlite:///{blocker}/mlflow.db"
    with pytest.raises(UserError, match=r"^logger\.mlflow\.tracking_uri=sqlite:///.* is a file, not a dir"):
        run(cfg(root, "mlf", "logger=mlflow", f"logger.mlflow.tracking_uri='{sqlite}'"))
    assert not (root / "mlf").exists() and blocker.read_text() == "not a directory"


def _closed_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_mlflow_server_is_refused_in_seconds(root):
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{_closed_local_port()}"
    start = time.perf_counter()
    with pytest.raises(UserError, match=rf"^logger\.mlflow\.tracking_uri={uri} does not answer \(.*\)\. Fix: "
                       r"start the MLflow server"):
        run(cfg(root, "mlf-server", "logger=mlflow", f"logger.mlflow.tracking_uri='{uri}'"))
    assert time.perf_counter() - start < 10 and not (root / "mlf-server").exists()


def test_a_server_that_answers_passes_the_check_even_without_a_health_page():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_mlflow_store(OmegaConf.create({"tracking_uri": f"http://127.0.0.1:{server.server_port}"}))
    finally:
        server.shutdown()
        server.server_close()


# -------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("mode", ["train", "validate", "test", "predict", "export", "embed"])
def test_a_file_that_is_not_a_checkpoint_is_named_in_every_mode(root, mode):
    junk = root / "notes.ckpt"
    junk.write_text("not a checkpoint")
    name = f"junk-{mode}"
    with pytest.raises(
        UserError,
        match=rf"^ckpt_path='{junk}' is not a checkpoint \(it is a 16-byte text file\)\. A checkpoint is "
        r"the \.ckpt file `mode=train` writes into <run dir>/checkpoints/",
    ):
        run(cfg(root, name, f"mode={mode}", f"ckpt_path={junk}", f"predict.input={root / 'images'}"))
    assert not (root / name).exists()


def test_an_empty_file_or_a_directory_as_checkpoint_is_named(root, checkpoint):
    empty = root / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"is not a checkpoint \(it is empty\)"):
        run(cfg(root, "empty", "mode=validate", f"ckpt_path={empty}"))
    run_dir = Path(checkpoint).parents[1]
    with pytest.raises(UserError, match=rf"^ckpt_path='{run_dir}' is a directory; pass the checkpoint file "
                       rf"itself, e.g\. ckpt_path={run_dir}/checkpoints/last\.ckpt"):
        run(cfg(root, "dir", "mode=validate", f"ckpt_path={run_dir}"))


# ------------------------------------------------------------------------------------------ lr_find
def test_lr_find_with_its_defaults_suggests_on_a_small_set(root):
    # 12-13 training images at batch 8: 2 steps an epoch, and trainer.max_epochs=1 (TINY); the search
    # runs its 100 steps over as many epochs as it takes
    summary = run(cfg(root, "lr", "mode=lr_find"))
    assert summary["search"]["num_training"] == 100
    assert summary["losses_recorded"] >= 13 and summary["suggested_lr"] is not None


def test_lr_find_with_too_few_steps_says_why_with_the_numbers(root, capsys):
    summary = run(cfg(root, "lr5", "mode=lr_find", "lr_find.num_training=5"))
    assert summary["suggested_lr"] is None and summary["losses_recorded"] == 5
    why = summary["no_suggestion"]
    assert "lr_find.num_training=5 records 5 losses and a suggestion needs at least 13" in why
    assert "Fix: lr_find.num_training=100" in capsys.readouterr().out
