"""Sliced inference (``predict.slice``): small objects the whole-image pass cannot see are found in the
tiles, with boxes in original-image pixels; a large object cut by tile edges stays one box."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer import tasks
from b4transfer.errors import NotSupportedError, UserError
from b4transfer.modes import run
from b4transfer.tasks.detection.module import DetectionModule
from b4transfer.tasks.detection.slicing import merge_tiles, starts, tiles

MODEL = {"name": "test_efficientnet", "pretrained": False}
SMALL = [(40, 40), (300, 100), (460, 320), (200, 330), (100, 250)]  # 12 x 12 white squares (x, y)
LARGE = (230, 150, 430, 290)  # a 200 x 140 white rectangle, larger than a tile


def _scene(path: Path) -> list[list[float]]:
    """A 512 x 384 grey image with 5 small squares and one large rectangle; returns the boxes."""
    arr = np.full((384, 512, 3), 110, np.uint8)
    boxes = []
    for x, y in SMALL:
        arr[y : y + 12, x : x + 12] = 255
        boxes.append([x, y, x + 12, y + 12])
    x0, y0, x1, y1 = LARGE
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).save(path)
    return [[float(v) for v in b] for b in boxes], [float(v) for v in LARGE]


def _blobs(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1) of the 4-connected True regions."""
    seen = np.zeros_like(mask)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, ys, xs = deque([(y0, x0)]), [], []
        while queue:
            y, x = queue.popleft()
            ys.append(y)
            xs.append(x)
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        out.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return out


def _detector_with_a_minimum_size(images, targets=None):
    """A stand-in detector that, like a real one, cannot see objects below a size (white blobs of at least
    5 x 5 canvas pixels, in input pixels) and is less sure of objects cut by the frame (0.6, else 0.9)."""
    out = []
    for img in images:
        side = img.shape[-1]
        found = [b for b in _blobs((img.mean(0) > 0.75).numpy()) if b[2] - b[0] >= 5 and b[3] - b[1] >= 5]
        cut = [min(b) == 0 or max(b) == side for b in found]
        boxes = torch.tensor(found, dtype=torch.float32).reshape(-1, 4)
        scores = torch.tensor([0.6 if c else 0.9 for c in cut])
        out.append({"boxes": boxes, "scores": scores, "labels": torch.zeros(len(found), dtype=torch.long)})
    return out


def _predict(tmp_path: Path, monkeypatch, name: str, *extra: str) -> list[dict]:
    module = DetectionModule(class_names=["thing"], model=MODEL, head={"fpn_channels": 32},
                             data={"image_size": 64}).eval()
    monkeypatch.setattr(module.head, "forward", _detector_with_a_minimum_size)
    cfg = compose_cfg(*TINY, "task=detection", "data.image_size=64", "mode=predict", "predict.precision=32",
                      f"predict.input={tmp_path / 'scene.png'}", f"run_dir={tmp_path / name}", *extra)
    (tmp_path / name).mkdir()
    summary = tasks.get("detection").predict(cfg, module, [tmp_path / "scene.png"], tmp_path / name)
    results = json.loads((tmp_path / name / "detections.json").read_text())
    return [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results)], summary


def _matched(found: list[list[float]], box: list[float], tol: float) -> bool:
    return any(max(abs(a - b) for a, b in zip(f, box)) <= tol for f in found)


def test_slicing_finds_the_small_objects_that_the_whole_image_misses(tmp_path, monkeypatch):
    small, large = _scene(tmp_path / "scene.png")
    whole, _ = _predict(tmp_path, monkeypatch, "whole")
    assert not any(_matched(whole, box, 4.0) for box in small)  # 12 px at 1/8 scale: 1.5 canvas px
    assert _matched(whole, large, 9.0)  # the large one it sees (1 canvas px = 8 px here)
    slicing = ("predict.slice=128", "predict.slice_overlap=0.2")
    sliced, summary = _predict(tmp_path, monkeypatch, "sliced", *slicing)
    assert summary["inference"]["slice"] == {"size": 128, "overlap": 0.2, "tiles": 20}
    for box in small:  # every small square, in original-image pixels (1 tile canvas px = 2 px)
        assert _matched(sliced, box, 2.5), (box, sliced)
    assert _matched(sliced, large, 9.0)
    assert len(sliced) == len(small) + 1  # the large object's cut-off pieces merged into it, no duplicates


def test_tiles_cover_the_image_with_the_asked_overlap():
    assert starts(512, 128, 0.2) == [0, 102, 204, 306, 384]  # the last flush with the edge
    assert starts(100, 128, 0.2) == [0]
    boxes = tiles(512, 384, 128, 0.2)
    assert boxes[0] == (0, 0, 512, 384) and len(boxes) == 1 + 5 * 4
    assert all(x1 - x0 == 128 and y1 - y0 == 128 for x0, y0, x1, y1 in boxes[1:])
    assert tiles(100, 80, 128, 0.2) == [(0, 0, 100, 80)]  # a small image: the whole image only


def test_merging_tiles_joins_copies_and_cut_pieces_but_not_neighbours():
    boxes = torch.tensor([[0.0, 0, 100, 60], [60, 0, 100, 60], [110, 10, 122, 22], [111, 10, 123, 22],
                          [30, 80, 42, 92]])
    out = merge_tiles(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]), torch.zeros(5, dtype=torch.long))
    assert out["boxes"].tolist() == [[0, 0, 100, 60], [110, 10, 122, 22], [30, 80, 42, 92]]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.5])  # the piece inside the whole: gone
    other = merge_tiles(boxes[:2], torch.tensor([0.9, 0.8]), torch.tensor([0, 1]))
    assert len(other["boxes"]) == 2  # another class is not merged


@pytest.mark.parametrize(
    "extra,error,match",
    [
        (("predict.slice=16",), UserError, r"predict.slice=16 must be a tile side in pixels >= 32"),
        (("predict.slice=128", "predict.slice_overlap=1.0"), UserError, r"predict.slice_overlap=1.0 must be"),
    ],
)
def test_bad_slice_settings_are_refused(tmp_path, extra, error, match):
    cfg = compose_cfg(*TINY, "task=detection", "mode=predict", f"run_dir={tmp_path / 'r'}", *extra)
    with pytest.raises(error, match=match):
        tasks.get("detection").check_config(cfg)


def test_a_task_without_sliced_inference_refuses_it(tmp_path):
    make_image_folder(tmp_path / "images", per_class=2, size=32)
    cfg = compose_cfg(*TINY, "data=folder", f"data.root={tmp_path / 'images'}", "mode=predict",
                      "predict.slice=128", f"run_dir={tmp_path / 'r'}")
    with pytest.raises(NotSupportedError, match=r"task=classification does not support predict.slice=128 "
                                                r"\(sliced inference\); it supports predict.slice=null"):
        tasks.get("classification").check_config(cfg)


@pytest.mark.parametrize(
    ("task", "override", "line"),
    [
        ("classification", "predict.draw=true", "task=classification does not support predict.draw=true "
         "(a setting of task=detection and task=segmentation); it supports predict.draw=false. Fix: drop "
         "predict.draw (the checkpoint is a task=classification model)."),
        ("segmentation", "predict.coco_json=ids.json", "task=segmentation does not support "
         "predict.coco_json=ids.json (a setting of task=detection); it supports predict.coco_json=null."),
        ("segmentation", "predict.draw_score_thresh=0.5", "task=segmentation does not support "
         "predict.draw_score_thresh=0.5 (a setting of task=detection)"),
    ],
)
def test_an_output_option_of_other_tasks_is_refused_not_ignored(tmp_path, task, override, line):
    """What mode=predict asks a checkpoint's task: an output it does not write (drawn images for a
    classifier, a COCO JSON's image ids for masks) is one line naming the tasks that write it."""
    cfg = compose_cfg(*TINY, f"task={task}", "mode=predict", override, f"run_dir={tmp_path / 'r'}")
    with pytest.raises(NotSupportedError) as err:
        tasks.get(task).check_config(cfg)
    assert line in str(err.value)
    tasks.get("detection").check_config(compose_cfg(*TINY, "task=detection", "mode=predict", override,
                                                    f"run_dir={tmp_path / 'r'}"))  # detection writes all


@pytest.mark.slow
def test_sliced_predict_runs_from_a_checkpoint(tmp_path):
    """Through the CLI's entry point: a trained detector, tiles of a generated image, one merged result."""
    det = (*TINY, "task=detection", "data.source.image_size=64", "data.source.train_images=8",
           "data.source.val_images=4", "data.image_size=64", "head.fpn_channels=32",
           f"data.source.root={tmp_path / 'demo'}")
    ckpt = run(compose_cfg(*det, f"run_dir={tmp_path / 'train'}"))["last_checkpoint"]
    _scene(tmp_path / "scene.png")
    image = tmp_path / "scene.png"
    summary = run(compose_cfg(*det, "mode=predict", f"ckpt_path={ckpt}", f"predict.input={image}",
                              "predict.slice=128", f"run_dir={tmp_path / 'predict'}"))
    assert summary["inference"]["slice"]["tiles"] == 20 and summary["images"] == 1
    results = json.loads((tmp_path / "predict" / "detections.json").read_text())
    assert all(r["image_id"] == 1 and 0 <= r["bbox"][0] <= 512 and 0 <= r["bbox"][1] <= 384 for r in results)
