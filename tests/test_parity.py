"""Export parity at the metric level (issue 11, must-show 4): after training, the validation split is
scored through each export's own runtime (timm, onnxruntime, OpenVINO, INT8 onnxruntime) and the metric
and its difference from PyTorch land in summary.json; a difference beyond the tolerance is a loud
warning. For a classifier and a detector."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import TINY, compose_cfg

from b4transfer.errors import UserError
from b4transfer.modes import run
from b4transfer.modes.parity import check_parity
from b4transfer.tasks.base import Task

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
FORMATS = "export.format=[timm,onnx,openvino,onnx_int8]"
EXACT = ("timm", "onnx", "openvino")  # fp32 runtimes: the same metric as PyTorch


def _check_table(summary: dict, metric: str) -> dict:
    parity = summary["parity"]
    table = parity["formats"]
    print(metric, {k: (v.get("value"), v.get("diff")) for k, v in table.items()})  # docs/modes/export.md
    assert parity["metric"] == metric and parity["split"] == "val" and parity["tolerance"] == 0.01
    assert set(table) == {"pytorch", *EXACT, "onnx_int8"}
    for fmt in EXACT:
        assert table[fmt]["diff"] == pytest.approx(0.0, abs=1e-6) and table[fmt]["within_tolerance"], (
            fmt,
            table,
        )
    int8 = table["onnx_int8"]
    assert 0.0 <= int8["value"] <= 1.0 and int8["diff"] == pytest.approx(
        int8["value"] - table["pytorch"]["value"]
    )
    assert int8["within_tolerance"] == (abs(int8["diff"]) <= 0.01)
    return table


def test_a_classifier_s_exports_are_scored_through_their_own_runtimes(tmp_path, image_folder):
    import onnxruntime as ort

    cfg = compose_cfg(
        *TINY,
        "data=folder",
        f"data.root={image_folder}",
        "data.image_size=32",
        FORMATS,
        "export.int8_calibration_images=8",
        "trainer.max_epochs=4",  # enough to learn the colours: the parity of a model that is right
        "optim.lr=0.01",
        "ema.enabled=false",
        f"run_dir={tmp_path / 'run'}",
    )
    summary = run(cfg)
    table = _check_table(summary, "val/acc1")
    assert table["pytorch"]["images"] == table["onnx"]["images"] == summary["val_images"]
    export = Path(summary["export_dir"])
    assert (export / "model.xml").is_file() and (export / "model.bin").is_file()
    assert summary["onnx_int8"]["calibration_images"] == 8
    ops = {n.op_type for n in __import__("onnx").load(str(export / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised
    assert ort.InferenceSession(str(export / "model_int8.onnx")).get_inputs()[0].name == "image"


def test_a_detector_s_exports_are_scored_through_their_own_runtimes(tmp_path):
    cfg = compose_cfg(
        *TINY,
        "task=detection",
        "data.source.image_size=64",
        "data.source.train_images=8",
        "data.source.val_images=4",
        "data.image_size=64",
        "head.fpn_channels=32",
        "trainer.limit_train_batches=2",
        "ema.enabled=false",
        "optim.lr=0.01",
        FORMATS,
        "export.int8_calibration_images=6",
        f"data.source.root={tmp_path / 'demo'}",
        f"run_dir={tmp_path / 'run'}",
    )
    summary = run(cfg)
    table = _check_table(summary, "val/map")
    assert table["onnx"]["images"] == table["onnx_int8"]["images"] == 4 and "map_50" in table["openvino"]
    # INT8: the convolutions (body, FPN, heads) take quantised inputs; the graph runs with onnxruntime's
    # default graph optimisations (which crashed on the fully quantised graph)
    import onnx
    import onnxruntime as ort

    export = Path(summary["export_dir"])
    assert summary["onnx_int8"]["calibration_images"] == 6 and summary["onnx_int8"]["quantised"] == "Conv"
    graph = onnx.load(str(export / "model_int8.onnx")).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}  # tensor -> the op that makes it
    convs = [n for n in graph.node if n.op_type == "Conv"]
    # the stem (the first convolution, on the normalised image) stays float, the others take int8 inputs
    assert summary["onnx_int8"]["float"] == [convs[0].name]
    assert all(producer.get(i) != "DequantizeLinear" for i in convs[0].input)
    assert len(convs) > 10 and all(producer[n.input[0]] == "DequantizeLinear" for n in convs[1:])
    session = ort.InferenceSession(str(export / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": np.zeros((1, 3, 64, 64), np.float32)})
    assert boxes.shape[1:] == (4,) and scores.shape == labels.shape == (len(boxes),)


class _Stub(Task):
    name = "stub"
    steps = ("parity",)
    export_formats = ("timm", "onnx")

    def score_export(self, fmt, module, out_dir, *, cfg, splits, datamodule):
        return {
            "metric": "val/acc1",
            "value": {"pytorch": 0.90, "timm": 0.90, "onnx": 0.85}[fmt],
            "images": 20,
        }


def test_a_difference_beyond_the_tolerance_is_a_loud_warning(tmp_path, caplog):
    cfg = compose_cfg(*TINY, "export.format=[timm,onnx]", f"run_dir={tmp_path}")
    with caplog.at_level(logging.WARNING):
        parity = check_parity(cfg, _Stub(), None, tmp_path, splits=None)
    assert (
        parity["formats"]["onnx"]["diff"] == pytest.approx(-0.05)
        and not parity["formats"]["onnx"]["within_tolerance"]
    )
    assert parity["formats"]["timm"]["within_tolerance"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(
        "EXPORT PARITY: export.format=onnx scores val/acc1 = 0.8500 through its own runtime, -0.0500 from "
        "the PyTorch model's 0.9000 (tolerance 0.0100)."
    )
    with pytest.raises(UserError, match=r"export\.parity_tolerance must be a metric difference >= 0, got -1"):
        check_parity(compose_cfg(*TINY, "export.parity_tolerance=-1"), _Stub(), None, tmp_path, splits=None)
    assert np.isfinite(parity["formats"]["pytorch"]["seconds"])


def test_a_task_without_parity_refuses_it_up_front(tmp_path):
    cfg = compose_cfg(*TINY, "task=segmentation", "export.parity=true", f"run_dir={tmp_path / 'seg'}")
    with pytest.raises(
        UserError,
        match=r"task=segmentation does not support export\.parity=true; it supports "
        r"export\.parity=false",
    ):
        run(cfg)
