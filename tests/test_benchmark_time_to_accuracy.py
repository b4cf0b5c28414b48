"""The time-to-accuracy benchmark: the t_lib / ratio arithmetic on hand-made epochs, the metrics.csv
reading, the skip without data, and (smoke: tiny model, generated JPEG class folders, two epochs) the suite
end to end through the CLI and the naive loop, with its runs reused the second time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
from benchmarks.bench_time_to_accuracy import ratios, read_epochs, run, seed_report, time_to_reach
from PIL import Image
from safetensors.torch import save_file
from tests.conftest import COLOURS


def _epochs(accs, times):
    return [{"epoch": i, "acc1": a, "elapsed_s": t} for i, (a, t) in enumerate(zip(accs, times))]


def test_t_lib_is_the_first_epoch_end_at_the_naive_final_accuracy():
    library = {"epochs": _epochs([0.5, 0.7, 0.8], [10.0, 20.0, 30.0]), "wall_s": 30.0}
    naive = {"epochs": _epochs([0.6, 0.7], [25.0, 50.0]), "wall_s": 50.0, "val_images": 10}
    report = seed_report(3, library, naive)
    assert report["t_lib"] == 20.0 and report["reached_at_epoch"] == 2 and report["ratio"] == 0.4
    assert report["naive_acc1"] == 0.7 and report["library_acc1"] == 0.8 and report["naive_s"] == 50.0
    # the same number of images right counts as reached (float32 metrics), one image fewer does not
    assert time_to_reach(_epochs([0.6999999], [5.0]), 0.7, val_images=10)["elapsed_s"] == 5.0
    assert time_to_reach(_epochs([0.6], [5.0]), 0.7, val_images=10) is None


def test_a_seed_that_never_reaches_the_naive_accuracy_has_no_ratio():
    library = {"epochs": _epochs([0.5, 0.6], [10.0, 20.0]), "wall_s": 20.0}
    naive = {"epochs": _epochs([0.7], [30.0]), "wall_s": 30.0, "val_images": 10}
    never = seed_report(1, library, naive)
    assert never["t_lib"] is None and never["reached_at_epoch"] is None and never["ratio"] is None
    reached = seed_report(0, {"epochs": _epochs([0.8], [12.0]), "wall_s": 12.0}, naive)
    out = ratios([reached, never])
    assert out == {"ratio_of_means": None, "mean_of_seed_ratios": None, "seeds_never_reached": [1]}


def test_the_ratio_is_of_the_means_and_the_mean_of_the_seed_ratios_is_beside_it():
    reports = [
        {"seed": 0, "t_lib": 10.0, "naive_s": 20.0, "ratio": 0.5},
        {"seed": 1, "t_lib": 30.0, "naive_s": 40.0, "ratio": 0.75},
    ]
    expected = {"ratio_of_means": 0.667, "mean_of_seed_ratios": 0.625, "seeds_never_reached": []}
    assert ratios(reports) == expected


def test_library_epochs_join_accuracy_and_elapsed_rows_by_epoch(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,step,time/elapsed_s,train/loss_epoch,val/acc1\n"
        "0,3,,,0.5\n0,3,12.5,0.9,\n1,7,,,0.75\n1,7,20.25,0.6,\n"
    )
    assert read_epochs(csv) == [
        {"epoch": 0, "acc1": 0.5, "elapsed_s": 12.5},
        {"epoch": 1, "acc1": 0.75, "elapsed_s": 20.25},
    ]
    csv.write_text("epoch,step,val/acc1\n0,3,0.5\n")
    with pytest.raises(RuntimeError, match="time/elapsed_s"):
        read_epochs(csv)


def test_time_to_accuracy_without_data_is_skipped_with_the_reason():
    result = run({"cls_data": None, "weights": None})
    assert result.status == "skipped" and "--cls-data" in result.reason and "--weights" in result.reason


def _jpeg_class_folders(root, per_split=(("train", 6), ("val", 3)), size=40):
    rng = np.random.default_rng(0)
    for split, n in per_split:
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(-40, 40, size=(size, size, 3))
                arr = np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_time_to_accuracy_suite_times_both_arms_and_reuses_runs(tmp_path, monkeypatch):
    from benchmarks import run as suite

    monkeypatch.setenv("B4TRANSFER_CACHE", str(tmp_path / "cache"))
    data = _jpeg_class_folders(tmp_path / "cls")
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(weights))
    out, md, cache = tmp_path / "results", tmp_path / "BENCHMARKS.md", tmp_path / "runs.json"
    args = ["--suite", "accuracy", "--smoke", "--only", "time_to_accuracy", "--out-dir", str(out),
            "--markdown", str(md), "--cls-data", str(data), "--weights", str(weights), "--cache", str(cache)]
    tiny = dict(model="test_efficientnet", image_size=64, epochs=2, seeds=[0])
    monkeypatch.setitem(suite.ACCURACY_PROFILES["smoke"], "time_to_accuracy", tiny)
    assert suite.main(args) == 0
    result = json.loads((out / "accuracy-smoke.json").read_text())["results"][0]
    assert result["status"] == "ok", result
    assert result["settings"]["batch_size"] == 32 and result["target"] == "<= 0.6"
    arms = result["extra"]["arms"]
    assert set(arms) == {"library", "naive"}
    for arm in arms.values():
        assert len(arm["per_epoch_acc1"]) == 2 and all(0.0 <= a <= 1.0 for a in arm["per_epoch_acc1"])
        first, last = arm["per_epoch_elapsed_s"]
        assert 0 < first < last == arm["wall_s"] and arm["reused"] == 0
    (seed,) = result["extra"]["per_seed"]
    assert seed["naive_acc1"] == arms["naive"]["acc1"]
    assert seed["naive_s"] == pytest.approx(arms["naive"]["wall_s"], abs=0.05)
    if seed["t_lib"] is None:
        assert result["ratio"] is None and result["passed"] is False
    else:
        reached_s = arms["library"]["per_epoch_elapsed_s"][seed["reached_at_epoch"] - 1]
        assert seed["t_lib"] == pytest.approx(reached_s, abs=0.05)
        assert result["ratio"] == pytest.approx(seed["t_lib"] / seed["naive_s"], abs=1e-3)
    runs = json.loads(cache.read_text())
    assert sorted(k.split("-")[0] for k in runs) == ["naive", "tta"]
    assert "Time to accuracy" in md.read_text() and "t_lib" in md.read_text()
    # a second call repeats nothing: both runs are found by their keys
    assert suite.main(args) == 0
    again = json.loads((out / "accuracy-smoke.json").read_text())["results"][0]
    assert all(a["reused"] == 1 for a in again["extra"]["arms"].values())
    assert again["extra"]["per_seed"] == result["extra"]["per_seed"]
