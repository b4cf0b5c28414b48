"""The distillation / pseudo-label benchmark (issue 28): its verdict arithmetic, the quarter split, the skip
without data or weights, and (smoke: tiny models, generated JPEG class folders, one epoch) both results end
to end through the suite, with every run reused the second time."""

from __future__ import annotations

import json

import pytest
import timm
from benchmarks.bench_distill import quarter_split, run, run_pseudo, verdict
from safetensors.torch import save_file
from tests.test_benchmark_time_to_accuracy import _jpeg_class_folders


def _runs(*accs):
    return [{"epochs": [{"epoch": 0, "acc1": 0.1}, {"epoch": 1, "acc1": a}]} for a in accs]


def test_the_verdict_is_the_gain_in_mean_against_the_larger_seed_spread():
    v = verdict(_runs(0.80, 0.82, 0.84), _runs(0.70, 0.71, 0.72))
    assert v["gain"] == pytest.approx(0.11) and v["spread"] == pytest.approx(0.02) and v["beats_spread"]
    assert v["ratio"] == pytest.approx(0.82 / 0.71, abs=1e-4)
    noisy = verdict(_runs(0.80, 0.60, 0.90), _runs(0.70, 0.71, 0.72))  # gain 0.057, sd 0.153
    assert not noisy["beats_spread"]


def test_the_quarter_split_keeps_a_seeded_share_per_class_and_hides_the_rest_s_classes(tmp_path):
    data = _jpeg_class_folders(tmp_path / "cls", per_split=(("train", 8), ("val", 2)))
    labelled, unlabelled = quarter_split(data, tmp_path / "q")
    kept = {c.name: sorted(p.name for p in c.iterdir()) for c in (labelled / "train").iterdir()}
    assert set(kept) == {"red", "green", "blue"} and all(len(v) == 2 for v in kept.values())
    rest = sorted(unlabelled.iterdir())
    assert len(rest) == 18 and all(p.name.startswith("u") for p in rest)
    used = {p.resolve() for c in (labelled / "train").iterdir() for p in c.iterdir()}
    assert not used & {p.resolve() for p in rest}  # no image both labelled and unlabelled
    assert sorted(p.name for p in (labelled / "val" / "red").iterdir()) == ["000.jpg", "001.jpg"]
    again = quarter_split(data, tmp_path / "q2")  # the same selection: seeded
    assert {c.name: sorted(p.name for p in c.iterdir()) for c in (again[0] / "train").iterdir()} == kept


def test_without_data_or_weights_both_results_are_skipped_naming_what_is_missing():
    for fn in (run, run_pseudo):
        result = fn({"cls_data": None, "weights": None, "student_weights": None})
        assert result.status == "skipped"
        assert "--cls-data" in result.reason and "--student-weights" in result.reason
        assert "convert_lite_weights.py --variant lite0" in result.reason


@pytest.mark.slow
def test_distillation_and_pseudo_label_results_end_to_end_with_runs_reused(tmp_path, monkeypatch):
    from benchmarks import run as suite

    data = _jpeg_class_folders(tmp_path / "cls", per_split=(("train", 8), ("val", 3)))
    teacher, student = tmp_path / "t.safetensors", tmp_path / "s.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(teacher))
    save_file(timm.create_model("test_resnet").state_dict(), str(student))
    tiny = dict(
        teacher_model="test_efficientnet",
        student_model="test_resnet",
        image_size=32,
        epochs=1,
        seeds=[0],
        speed_rounds=2,
        distill_settings=[[0.5, 4.0]],
        pseudo_threshold=0.3,
        self_training=True,
    )
    for name in ("distillation", "pseudo_labels"):
        monkeypatch.setitem(suite.ACCURACY_PROFILES["smoke"], name, tiny)
    out, md = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    args = [
        "--suite",
        "accuracy",
        "--smoke",
        "--only",
        "distillation,pseudo_labels",
        "--out-dir",
        str(out),
        "--markdown",
        str(md),
        "--cls-data",
        str(data),
        "--weights",
        str(teacher),
        "--student-weights",
        str(student),
        "--cache",
        str(tmp_path / "runs" / "acc.json"),
    ]
    assert suite.main(args) == 0
    distill, pseudo = json.loads((out / "accuracy-smoke.json").read_text())["results"]
    assert distill["status"] == pseudo["status"] == "ok", (distill, pseudo)
    assert set(distill["extra"]["arms"]) == {"teacher", "student alone", "student distilled a=0.5 T=4.0"}
    assert distill["extra"]["student_speedup_onnx_cpu"] > 0 and distill["extra"]["teacher_ms"] > 0
    assert set(pseudo["extra"]["arms"]) == {
        "teacher (quarter)",
        "student (quarter)",
        "student + pseudo-labels",
        "teacher + pseudo-labels",
    }
    assert pseudo["extra"]["unlabelled_images"] == 18 and pseudo["extra"]["pseudo_threshold"] == 0.3
    assert 0 <= pseudo["extra"]["pseudo_labels_used"][0] <= 18
    for result in (distill, pseudo):
        assert all(a["reused"] == 0 and 0 <= a["acc1"] <= 1 for a in result["extra"]["arms"].values())
    assert "Pseudo-labels" in md.read_text() and "student_speedup_onnx_cpu" in md.read_text()
    assert suite.main(args) == 0  # again: every run is found in its folder
    again = json.loads((out / "accuracy-smoke.json").read_text())["results"]
    assert all(a["reused"] == 1 for r in again for a in r["extra"]["arms"].values())
    assert again[0]["library"] == distill["library"] and again[1]["baseline"] == pseudo["baseline"]
