"""The task contract, cell by cell: every registered task x mode x export format x fine-tuning schedule
(plus ``data.cache_features`` and multi-label) either completes, writing the files it promises (and they
load back), or is refused before any training step with one error line naming what is supported.

Everything runs through :func:`b4transfer.modes.run`, the CLI's entry point, on tiny generated data; one
trained checkpoint per task is shared by the cells (module-scoped fixtures).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import safetensors.torch
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer import tasks
from b4transfer.errors import NotSupportedError, UserError
from b4transfer.modes import run
from b4transfer.tasks.base import EXPORT_FORMATS, MODES, SCHEDULES

TASKS = ("classification", "detection", "segmentation")
DET = (
    "data.source.image_size=64",
    "data.source.train_images=12",
    "data.source.val_images=6",
    "data.image_size=64",
    "head.fpn_channels=32",
    "trainer.limit_val_batches=1",
)
SEG = (
    "data.source.image_size=64",
    "data.source.train_images=12",
    "data.source.val_images=6",
    "data.image_size=64",
    "head.fpn_channels=16",
    "head.seg_channels=16",
    "trainer.limit_val_batches=1",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("contract")
    make_image_folder(root / "images", per_class=6, size=32)
    return root


def overrides(task: str, root: Path, run_dir: Path, *extra: str) -> list[str]:
    if task == "detection":
        data = ["task=detection", *DET, f"data.source.root={root / 'demo'}"]
    elif task == "segmentation":
        data = ["task=segmentation", *SEG, f"data.source.root={root / 'demo_masks'}"]
    else:
        data = ["data=folder", f"data.root={root / 'images'}", "data.image_size=32"]
    return [*TINY, *data, f"run_dir={run_dir}", *extra]


def cell(task: str, root: Path, name: str, *extra: str):
    return compose_cfg(*overrides(task, root, root / task / name, *extra))


@pytest.fixture(scope="module")
def trained(data) -> dict[str, dict]:
    """One training run per task (mode=train, the default cell): its summary."""
    return {task: run(cell(task, data, "train")) for task in TASKS}


def _refused(cfg, match: str) -> None:
    """The cell is refused with one line that names what is supported, and nothing trained."""
    with pytest.raises(UserError) as info:
        run(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message
    run_dir = Path(cfg.run_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.csv").exists()


def test_every_task_is_registered():
    assert set(TASKS) <= set(tasks.names())
    for name in TASKS:
        task = tasks.get(name)
        assert task.name == name and set(task.modes) <= set(MODES)
        assert set(task.export_formats) <= set(EXPORT_FORMATS) and set(task.schedules) <= set(SCHEDULES)


@pytest.mark.parametrize("task", TASKS)
def test_train_writes_checkpoints_export_and_summary(trained, task):
    summary = trained[task]
    run_dir = Path(summary["last_checkpoint"]).parents[1]
    assert summary["task"] == task and Path(summary["last_checkpoint"]).is_file()
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "summary.json").is_file()
    assert tasks.load_module(summary["last_checkpoint"]).task_name == task
    _export_loads(Path(summary["export_dir"]))


def _export_loads(export_dir: Path) -> None:
    config = json.loads((export_dir / "config.json").read_text())
    state = safetensors.torch.load_file(str(export_dir / "model.safetensors"))
    assert config["b4transfer_version"] and state


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("mode", [m for m in MODES if m != "train"])
def test_every_mode_completes_or_is_refused_up_front(data, trained, task, mode):
    ckpt = trained[task]["last_checkpoint"]
    images = data / "images" / "red"
    cfg = cell(
        task,
        data,
        mode,
        f"mode={mode}",
        f"distill.teacher={ckpt}" if mode == "distill" else f"ckpt_path={ckpt}",  # distill: a teacher
        f"predict.input={images}",
        "lr_find.num_training=3",
        "predict.check_agreement=0",
    )
    if mode not in tasks.get(task).modes:
        _refused(cfg, f"task={task} does not support mode={mode}; it supports ")
        return
    summary = run(cfg)
    run_dir = Path(cfg.run_dir)
    assert summary["mode"] == mode and json.loads((run_dir / "summary.json").read_text())["mode"] == mode
    if mode in ("validate", "test"):
        assert summary["metrics"]["val/loss" if mode == "validate" else "test/loss"] > 0
    elif mode == "predict":
        assert Path(summary["predictions"]).is_file() and summary["images"] == 6
    elif mode == "embed":
        assert summary["shape"][0] == 6 and Path(summary["embeddings"]).is_file()
    elif mode == "export":
        _export_loads(Path(summary["export_dir"]))
    elif mode == "lr_find":
        assert "suggested_lr" in summary
    elif mode == "distill":
        assert summary["distillation"]["teacher"] == ckpt and Path(summary["best_checkpoint"]).is_file()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_export_format_completes_or_is_refused_up_front(data, trained, task, fmt):
    ckpt = trained[task]["last_checkpoint"]
    cfg = cell(task, data, f"export-{fmt}", "mode=export", f"ckpt_path={ckpt}", f"export.format={fmt}")
    if fmt not in tasks.get(task).export_formats:
        _refused(cfg, f"task={task} does not support export.format={fmt}; it supports ")
        # and a training run asking for it is refused before it trains, not after
        _refused(cell(task, data, f"train-{fmt}", f"export.format=[timm,{fmt}]"), "does not support export")
        return
    summary = run(cfg)
    if fmt in ("onnx", "onnx_int8"):
        import onnxruntime as ort

        assert ort.InferenceSession(summary[fmt]["path"]).get_inputs()[0].name == "image"
    elif fmt == "openvino":
        import openvino as ov

        assert ov.Core().read_model(summary["openvino"]["path"]).inputs[0].any_name == "image"
    else:
        _export_loads(Path(summary["export_dir"]))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "full"])  # full: the shared run
def test_every_schedule_trains_or_is_refused_up_front(data, task, schedule):
    cfg = cell(task, data, f"finetune-{schedule}", f"finetune={schedule}", "trainer.limit_train_batches=2")
    if schedule not in tasks.get(task).schedules:
        _refused(cfg, f"task={task} does not support finetune={schedule}; it supports ")
        return
    summary = run(cfg)
    assert summary["global_step"] >= 1 and Path(summary["last_checkpoint"]).is_file()


@pytest.mark.parametrize("task", TASKS)
def test_cache_features_and_multi_label(data, task, tmp_path):
    cache = (
        "data.cache_features=true" if task == "classification" else "+data.cache_features=true",
        "data.augment=false",
        "finetune=linear_probe",
    )
    if task != "classification":
        _refused(cell(task, data, "cache", *cache), f"task={task} does not support data.cache_features")
        _refused(cell(task, data, "multi", "+data.multi_label=true"), "does not support data.multi_label")
        return
    summary = run(cell(task, data, "cache", *cache))
    assert summary["feature_extraction_s"] >= 0 and Path(summary["last_checkpoint"]).is_file()
    table = tmp_path / "tags.csv"
    rows = [
        (f"images/{c}/{i:03d}.png", f"{c} {'bright' if i % 2 else 'dark'}")
        for c in ("red", "green", "blue")
        for i in range(6)
    ]
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    for src in data.glob("images/*/*.png"):
        (tmp_path / src.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / src.relative_to(data)).write_bytes(src.read_bytes())
    cfg = compose_cfg(
        *TINY,
        "data=csv",
        f"data.csv={table}",
        "data.multi_label=true",
        "data.image_size=32",
        f"run_dir={tmp_path / 'multi'}",
    )
    summary = run(cfg)
    assert "val/map" in summary["metrics"] and Path(summary["export_dir"], "config.json").is_file()
    assert json.loads(Path(summary["export_dir"], "config.json").read_text())["multi_label"] is True


def _tta_cells() -> list[tuple[str, str]]:
    """Every (task, tta mode) the registered tasks list (asked of each task, not written here)."""
    return [(task, mode) for task in TASKS for mode in tasks.get(task).tta_modes]


# A barely trained detector scores every box near its prior, under head.score_thresh: no detection, every
# metric 0 with or without TTA. Kept by a lower threshold, its boxes (and so the metrics) show the views.
KEEP_LOW_SCORES = {"detection": ("head.score_thresh=0.001",)}


@pytest.fixture(scope="module")
def tta_checkpoints(data, trained) -> dict[str, str]:
    """A checkpoint per task whose validation outputs are not empty (the shared run's where it is so)."""
    return {
        task: run(cell(task, data, "tta-train", *KEEP_LOW_SCORES[task]))["last_checkpoint"]
        if task in KEEP_LOW_SCORES else trained[task]["last_checkpoint"]
        for task in TASKS
    }


@pytest.mark.parametrize("task,mode", _tta_cells())
def test_validate_with_each_listed_tta_mode_changes_the_validation_outputs(data, tta_checkpoints, task, mode):
    """``mode=validate tta=<mode>`` evaluates the views' merged outputs: some validation metric differs
    from the same checkpoint's without TTA (the evaluation runs both and reports each)."""
    ckpt = tta_checkpoints[task]
    cfg = cell(task, data, f"tta-{mode}", "mode=validate", f"ckpt_path={ckpt}", f"tta={mode}")
    summary = run(cfg)
    with_tta, without = summary["metrics"], summary["tta"]["metrics_without_tta"]
    assert with_tta.keys() == without.keys() and with_tta
    changed = {k: (without[k], with_tta[k]) for k in with_tta if with_tta[k] != pytest.approx(without[k])}
    assert changed, f"task={task} tta={mode}: every validation metric is the same as without TTA: {with_tta}"


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(UserError, match=r"task='keypoints' is not a task; choose one of .*segmentation"):
        tasks.get("keypoints")


def test_refusals_are_the_library_s_own_error_type(data, trained):
    ckpt = trained["detection"]["last_checkpoint"]
    cfg = cell("detection", data, "embed-type", "mode=embed", f"ckpt_path={ckpt}", f"predict.input={data}")
    with pytest.raises(NotSupportedError):
        run(cfg)


# Barely trained heads score near their prior; these settings give each detector confident boxes on the
# validation images, so that the ONNX check compares boxes (deterministic: seeded, CPU).
SCORES_OFF_THE_PRIOR = {
    "retinanet": ("trainer.limit_train_batches=2", "ema.enabled=false", "optim.lr=0.01"),
    "fcos": ("trainer.limit_train_batches=1", "head.score_thresh=0.005"),
    "faster_rcnn": ("trainer.limit_train_batches=1", "head.score_thresh=0.005"),
}


@pytest.mark.parametrize("detector", ["retinanet", "fcos", "faster_rcnn"])
def test_every_detector_trains_and_exports_onnx_that_onnxruntime_runs(data, detector):
    import numpy as np
    import onnxruntime as ort

    width = "head.fpn_channels=64" if detector == "fcos" else "head.fpn_channels=32"
    cfg = cell(
        "detection",
        data,
        f"onnx-{detector}",
        f"head.detector={detector}",
        width,
        "export.format=[timm,onnx]",
        "head.detections_per_img=10",
        *SCORES_OFF_THE_PRIOR[detector],
    )
    summary = run(cfg)
    report, check = summary["onnx"], summary["onnx"]["check"]
    # on the validation images, every PyTorch box is found by onnxruntime (IoU >= 0.99, score within 1e-3)
    assert report["detector"] == detector and check["images"] == 4
    assert check["boxes"] > 0 and check["matched"] == check["boxes"] and check["min_iou"] >= 0.99
    session = ort.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": np.zeros((1, 3, 64, 64), np.float32)})
    assert boxes.shape[1:] == (4,) and len(scores) == len(labels)
    _export_loads(Path(summary["export_dir"]))
