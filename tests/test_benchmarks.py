"""The benchmark harness (smoke profile: tiny model, one round) writes its JSON, markdown and plot;
the GPU suite explains itself without CUDA; the default progress bar refreshes at the logging interval."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
from tests.conftest import compose_cfg

from b4transfer.training.trainer import build_trainer

ALL = ["train_overhead", "inference", "predict_pipeline", "input_pipeline", "cached_probe", "scaling",
       "detection", "segmentation_fpn"]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("B4TRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the benchmarks' scratch files
    return tmp_path


@pytest.mark.slow
def test_smoke_suite_writes_results_markdown_and_plot(isolated):
    from benchmarks.run import main

    out, md = isolated / "results", isolated / "BENCHMARKS.md"
    assert main(["--suite", "cpu", "--smoke", "--out-dir", str(out), "--markdown", str(md)]) == 0
    record = json.loads((out / "cpu-smoke.json").read_text())
    assert record["machine"]["torch"] == torch.__version__ and record["machine"]["cpu_count"] >= 1
    results = {r["name"]: r for r in record["results"]}
    assert list(results) == ALL
    for name in ("train_overhead", "inference", "input_pipeline", "cached_probe", "detection"):
        r = results[name]
        assert r["status"] == "ok", r["reason"]
        assert r["library"]["median"] > 0 and r["baseline"]["median"] > 0 and r["ratio"] > 0
        assert r["passed"] in (True, False) and r["target"]
    assert results["inference"]["extra"]["agreement_images"] == 8
    assert results["inference"]["settings"]["runtime"] == results["inference"]["extra"]["runtime_used"]
    pipeline = results["predict_pipeline"]
    assert pipeline["status"] == "ok" and pipeline["extra"]["bound"] in ("input pipeline", "model")
    assert pipeline["extra"]["pipeline_images_per_s"] > 0 and pipeline["extra"]["model_images_per_s"] > 0
    assert results["cached_probe"]["extra"]["feature_extraction_s"] > 0
    rows = results["scaling"]["extra"]["rows"]
    assert {r["kind"] for r in rows} == {"inference", "train"} and all(r["rss_peak_mib"] > 0 for r in rows)
    det = results["detection"]["extra"]
    assert det["predict_images_per_s"] > 0 and det["predict_raw_images_per_s"] > 0
    assert det["predict_boxes_compared"] > 0 and det["predict_box_agreement_vs_raw_fp32"] >= 0.9
    text = md.read_text()
    assert "## CPU suite, smoke profile" in text and "![cpu smoke](results/cpu-smoke.png)" in text
    assert "| Detection" in text and "not available" not in text
    assert (out / "cpu-smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_suite_without_cuda_says_so_and_succeeds(isolated, capsys):
    from benchmarks.run import main

    out, md = isolated / "results", isolated / "BENCHMARKS.md"
    assert main(["--suite", "gpu", "--quick", "--out-dir", str(out), "--markdown", str(md)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    record = json.loads((out / "gpu-quick.json").read_text())
    assert [r["status"] for r in record["results"]] == ["skipped"] * 4
    assert "GPU numbers were not measured" in md.read_text()


def test_progress_bar_refreshes_at_the_logging_interval(tmp_path, monkeypatch):
    monkeypatch.setattr("b4transfer.training.callbacks.stdout_is_terminal", lambda: True)  # a terminal
    cfg = compose_cfg("trainer.log_every_n_steps=7", "trainer.enable_progress_bar=true",
                      f"run_dir={tmp_path}")
    trainer = build_trainer(cfg, tmp_path)
    assert trainer.progress_bar_callback.refresh_rate == 7
    cfg = compose_cfg("trainer.enable_progress_bar=false", f"run_dir={tmp_path}")
    assert build_trainer(cfg, tmp_path).progress_bar_callback is None


def test_the_predict_path_probe_times_every_stage_on_the_cpu(tmp_path):
    """scripts/predict_path_probe.py (the GPU suite's diagnosis of the predict path) runs end to end: every
    stage's rate, the path's per-call start-up, and its JSON."""
    from tests.conftest import load_script

    probe = load_script("predict_path_probe")
    out = tmp_path / "probe.json"
    report = probe.main(["--device", "cpu", "--model", "test_efficientnet", "--images", "8", "--batch-size",
                         "4", "--rounds", "1", "--out", str(out)])
    assert set(report["images_per_s"]) == {"model", "predict_step", "+ copy", "run_inference",
                                          "run_inference x2 data"}
    assert all(v > 0 for v in report["images_per_s"].values())
    assert json.loads(out.read_text())["images"] == 8 and report["device"] == "cpu"
