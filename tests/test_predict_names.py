"""``mode=predict`` writes one output per input (issue 24: ``x.jpg`` and ``x.png`` gave one segmentation
mask, and 4 inputs gave 2 drawn detection files): names keep sub-folders, and inputs that differ only by
their extension keep it; the CSV / JSON point at each input's own file. The segmentation end-to-end run
is in ``test_segmentation_refusals.py``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from tests.conftest import compose_cfg

from b4transfer.runtime.inference import output_names
from b4transfer.tasks.classification import predict as cls_predict
from b4transfer.tasks.detection import predict as det_predict

SIZES = {"x.jpg": (40, 30), "x.png": (50, 31), "sub/y.jpg": (60, 32), "sub__y.jpg": (70, 33)}


def _inputs(root: Path) -> list[Path]:
    for name, (w, h) in SIZES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / name)
    return sorted(root / n for n in SIZES)


def test_output_names_are_unique_keep_sub_folders_and_extensions_only_where_needed(tmp_path):
    paths = _inputs(tmp_path)
    names = {
        p.relative_to(tmp_path).as_posix(): n.as_posix() for p, n in zip(paths, output_names(paths, tmp_path))
    }
    assert names == {
        "x.jpg": "x.jpg.png",
        "x.png": "x.png.png",
        "sub/y.jpg": "sub/y.png",
        "sub__y.jpg": "sub__y.png",
    }
    assert output_names(paths, tmp_path) == output_names(paths, tmp_path)  # stable
    assert output_names([tmp_path / "x.jpg"], tmp_path / "x.jpg") == [Path("x.png")]  # one file: its name
    odd = [tmp_path / "A.jpg", tmp_path / "a.jpg", tmp_path / "a.jpg.png"]  # clashes by case and by name
    assert [n.as_posix() for n in output_names(odd, tmp_path)] == ["A.jpg.png", "a.jpg-2.png", "a.jpg-3.png"]


def test_detection_draws_one_file_per_input_and_images_json_points_at_it(tmp_path, monkeypatch):
    paths = _inputs(tmp_path / "in")
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    monkeypatch.setattr(det_predict, "_run", lambda cfg, module, paths: ([empty] * len(paths), {}))
    module = SimpleNamespace(
        category_ids=[1], class_names=["thing"], hparams={}, score_thresholds=lambda t: [t]
    )
    cfg = compose_cfg("task=detection", f"predict.input={tmp_path / 'in'}", "predict.draw=true")
    (tmp_path / "run").mkdir()
    summary = det_predict.write_detections(cfg, module, paths, tmp_path / "run")
    drawn = sorted(Path(summary["drawn"]).rglob("*.png"))
    assert len(drawn) == 4  # was 2: x.jpg / x.png and sub/y.jpg / sub__y.jpg collided
    images = json.loads((tmp_path / "run" / "images.json").read_text())["images"]
    for image in images:
        rel = Path(image["file_name"]).relative_to(tmp_path / "in").as_posix()
        assert Image.open(image["drawn"]).size == SIZES[rel] == (image["width"], image["height"])


class _Head:
    multi_label = False


def test_classification_rows_name_each_input_whatever_its_extension(tmp_path, monkeypatch):
    paths = _inputs(tmp_path / "in")
    probs = torch.eye(4)[:, :2] + 0.01  # input i: class i % 2 on top (a distinct row per input)

    def fake_run(cfg, module, paths, run_dir, output):
        return (probs if output == "probs" else torch.arange(8.0).reshape(4, 2)), {}

    monkeypatch.setattr(cls_predict, "_run_predict", fake_run)
    module = SimpleNamespace(class_names=["a", "b"], head=_Head(), hparams={})
    cfg = compose_cfg(f"predict.input={tmp_path / 'in'}", "predict.top_k=1")
    out = cls_predict.write_predictions(cfg, module, paths, tmp_path)
    with open(out["predictions"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(p) for p in paths]  # 4 rows, each its own file's full path
    cls_predict.write_embeddings(cfg, module, paths, tmp_path)
    with open(tmp_path / "embeddings.csv") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [str(p) for p in paths]
    assert np.load(tmp_path / "embeddings.npy").shape == (4, 2)
