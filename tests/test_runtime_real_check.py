"""``scripts/runtime_real_check.py`` (issue 29's real-image check) end to end in its smoke setting: a
generated set, the tiny backbone, every runtime validated and ``auto`` run on every val image."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "runtime_real_check.py"


@pytest.mark.slow  # about 20 s on one busy core
def test_smoke_run_validates_every_runtime_and_reports_the_auto_choice(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("runtime_real_check", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "results.json"
    work = tmp_path / "work"
    results = script.main(["--smoke", "--image-size", "32", "--work", str(work), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    rows = results["validate"]
    assert list(rows) == ["torch", "onnxruntime", "openvino", "onnx_int8"]
    assert rows["torch"]["diff_vs_torch_fp32"] == 0 and rows["torch"]["export"] is None
    for name in ("onnxruntime", "openvino", "onnx_int8"):  # each built beside the checkpoint by its own run
        assert rows[name]["export_reused"] is False and Path(rows[name]["export"]).is_file()
        assert rows[name]["within_tolerance"] == (abs(rows[name]["diff_vs_torch_fp32"]) <= 0.01)
    pred = results["predict_auto"]
    assert pred["check_agreement"] == pred["images"] == results["train"]["val_images"] == 18
    assert set(pred["candidates"]) == {"torch", "onnxruntime", "openvino", "onnx_int8"}
    assert all(c["export_reused"] for n, c in pred["candidates"].items() if n != "torch")
    assert pred["used"] in pred["candidates"] and pred["candidates"][pred["used"]]["agrees"]
    assert pred["candidates"]["onnxruntime"]["top1_agreement_vs_fp32"] == 1.0  # fp32: the same top-1
    assert pred["exports_built"]["onnx_int8"]["calibration_images"] == 8
    assert 0.0 <= pred["top1_accuracy_vs_folder_labels"] <= 1.0
    table = capsys.readouterr().out
    assert f"**{pred['used']}** ran" in table and "| onnx_int8 |" in table
    assert results["cpu"]["model_name"] in table
