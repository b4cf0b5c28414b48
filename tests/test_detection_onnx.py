"""ONNX export of the three detectors: onnxruntime finds every confident PyTorch box (label, IoU, score)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from b4transfer.backbone import create_backbone  # noqa: E402
from b4transfer.tasks.classification.onnx_export import onnx_metadata  # noqa: E402
from b4transfer.tasks.detection.head import DETECTORS, build_detector  # noqa: E402
from b4transfer.tasks.detection.onnx_check import nms_rounding_dependent  # noqa: E402
from b4transfer.tasks.detection.onnx_export import (  # noqa: E402
    check_detector_onnx,
    export_detector_onnx,
    onnx_export_refusal,
)

NAMES = ["circle", "square", "triangle"]
# Canvas sizes: 112 is not a multiple of 32, so the detector's internal padding is in the graph too.
SIZES = {"retinanet": 96, "fcos": 112, "faster_rcnn": 96}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _seeded_detector(name: str) -> torch.nn.Module:
    """A random-init detector whose heads are rescaled so it gives many boxes with spread-out scores.

    torchvision initialises the classifiers to a constant prior (every score ~0.01) and the box
    regressors to near-zero deltas; that would leave few boxes above any threshold, all tied, at their
    anchors. Larger weights give varied scores, labels and decoded boxes, like a (poorly) trained model.
    """
    torch.manual_seed(0)
    body = create_backbone("test_efficientnet", pretrained=False, features_only=True, out_indices=(2, 3, 4))
    det = build_detector(
        body,
        len(NAMES),
        image_size=SIZES[name],
        image_mean=MEAN,
        image_std=STD,
        detector=name,
        fpn_channels=64 if name == "fcos" else 32,
    )
    with torch.no_grad():
        if name == "faster_rcnn":
            predictor = det.roi_heads.box_predictor
            torch.nn.init.normal_(predictor.cls_score.weight, std=1.5)
            predictor.cls_score.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # background a bit likelier
            torch.nn.init.normal_(predictor.bbox_pred.weight, std=0.05)
        else:
            for m in det.head.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight)
            cls = det.head.classification_head.cls_logits
            torch.nn.init.normal_(cls.weight, std=0.5 if name == "retinanet" else 0.1)
            cls.bias.fill_(-3.0)
            reg = det.head.regression_head.bbox_reg
            torch.nn.init.normal_(reg.weight, std=0.02)
            if name == "fcos":
                reg.bias.fill_(1.0)  # positive left/top/right/bottom distances: boxes with an area
    return det.eval()


def _canvases(size: int, n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Grey letterbox-like canvases with a few solid rectangles (structure for the features)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = 0.5 + 0.05 * torch.randn(3, size, size, generator=g)
        for _ in range(3):
            x0, y0 = torch.randint(0, size - 24, (2,), generator=g).tolist()
            w, h = torch.randint(12, 40, (2,), generator=g).tolist()
            x[:, y0 : y0 + h, x0 : x0 + w] = torch.rand(3, 1, 1, generator=g)
        out.append(x.clamp(0, 1))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per detector, built lazily: ``(detector, path, export report)``."""
    root = tmp_path_factory.mktemp("detonnx")
    cache = {}

    def get(name: str):
        if name not in cache:
            det = _seeded_detector(name)
            path = root / name / "model.onnx"
            report = export_detector_onnx(
                det, path, image_size=SIZES[name], class_names=NAMES, metadata={"category_ids": [7, 3, 9]}
            )
            cache[name] = det, path, report
        return cache[name]

    return get


@pytest.mark.parametrize("name", DETECTORS)
def test_onnxruntime_finds_every_confident_pytorch_box(exported, name):
    det, path, report = exported(name)
    assert report["opset"] == 17 and report["detector"] == name and report["image_size"] == SIZES[name]
    size = SIZES[name]
    images = _canvases(size)
    check = check_detector_onnx(det, path, images, min_score=0.1)
    # Not vacuous: many confident boxes on every image, all found again.
    assert check["images"] == 3 and check["boxes"] >= 30, check
    assert check["matched"] == check["boxes"] and check["matched_share"] == 1.0
    assert check["max_score_diff"] <= 1e-3 and check["min_iou"] >= 0.99
    assert check["torch_boxes"] > 0 and check["onnx_boxes"] > 0

    # The graph's own outputs: shapes, dtypes, 0-based labels (Faster R-CNN's background removed),
    # canvas-pixel boxes; and an (N, 3, S, S) batch works in the check as well.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape == [1, 3, size, size]
    boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"image": images[0][None].numpy()})
    n = len(scores)
    assert n > 0 and boxes.shape == (n, 4) and labels.shape == (n,)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < len(NAMES)
    assert (boxes[:, 2:] >= boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= size
    assert (np.diff(scores) <= 1e-6).all()
    assert set(labels.tolist()) == {0, 1, 2}  # every class, none shifted (the check compared them too)
    batch = check_detector_onnx(det, path, torch.stack(images[:2]), min_score=0.1)
    assert batch["images"] == 2 and batch["matched_share"] == 1.0


@pytest.mark.parametrize("name", DETECTORS)
def test_metadata_holds_labels_size_and_preprocessing(exported, name):
    _, path, _ = exported(name)
    meta = onnx_metadata(path)
    assert meta["label_names"] == NAMES and meta["image_size"] == SIZES[name]
    assert meta["detector"] == name and meta["category_ids"] == [7, 3, 9]
    assert meta["mean"] == pytest.approx(MEAN) and meta["pad_fill"] == [124, 116, 104]
    assert meta["score_thresh"] == 0.05 and meta["detections_per_img"] == 100
    assert "b4transfer_version" in meta and "0-based" in meta["outputs"]


@pytest.mark.parametrize("name", DETECTORS)
def test_an_image_without_detections_gives_empty_outputs(exported, tmp_path, name):
    det = copy.deepcopy(exported(name)[0])
    (det.roi_heads if name == "faster_rcnn" else det).score_thresh = 0.9999
    path = tmp_path / "none.onnx"
    export_detector_onnx(det, path, image_size=SIZES[name], class_names=NAMES)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": _canvases(SIZES[name], 1)[0][None].numpy()})
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    with pytest.raises(RuntimeError, match="would prove nothing"):
        check_detector_onnx(det, path, _canvases(SIZES[name], 1))
    assert check_detector_onnx(det, path, _canvases(SIZES[name], 1), min_boxes=0)["boxes"] == 0


def test_check_catches_a_model_that_differs_from_the_file(exported, tmp_path):
    det, path, _ = exported("retinanet")
    images = _canvases(SIZES["retinanet"])
    changed = copy.deepcopy(det)
    with torch.no_grad():
        changed.head.classification_head.cls_logits.bias.add_(0.5)  # every score moves
    with pytest.raises(RuntimeError, match=r"matches only 0/\d+ PyTorch boxes"):
        check_detector_onnx(changed, path, images, min_score=0.1)
    # export_detector_onnx(check_images=...) removes a file that fails its check, keeps one that passes.
    good = tmp_path / "good.onnx"
    report = export_detector_onnx(det, good, image_size=SIZES["retinanet"], check_images=images)
    assert good.is_file() and report["check"]["matched_share"] == 1.0 and report["check"]["boxes"] > 0


def test_nms_winners_by_a_near_tie_are_not_required():
    """Which of two overlapping near-equal scores NMS keeps is rounding: such a winner (and what its
    fate decides) is not required to be found again; a clear winner is."""
    box = lambda x: [x, 0.0, x + 10.0, 10.0]  # noqa: E731  # IoU 0.54 at 3 px apart, 0.25 at 6
    pool = {  # the candidates before NMS
        "boxes": torch.tensor([box(0), box(3), box(6), box(40), box(41), box(80), box(81)]),
        "scores": torch.tensor([0.8, 0.8 - 1e-7, 0.7, 0.9, 0.5, 0.6, 0.6 - 1e-7]),
        "labels": torch.tensor([0, 0, 0, 0, 0, 0, 1]),
    }
    kept = {k: v[[0, 2, 3, 5, 6]] for k, v in pool.items()}  # what NMS at 0.5 keeps
    flags = nms_rounding_dependent(kept, pool, nms_thresh=0.5, atol=1e-6).tolist()
    # box(0): won a near-tie; box(6): suppressed by box(3) in a runtime where box(3) wins that tie;
    # box(40): beats box(41) clearly; box(80) and box(81): a near-tie of different labels
    assert flags == [True, True, False, False, False]
    assert nms_rounding_dependent(kept, pool, nms_thresh=0.5, atol=1e-8).tolist() == [False] * 5
    moved = {**kept, "boxes": kept["boxes"] + 0.5}  # not among the candidates: cannot be vouched for
    assert nms_rounding_dependent(moved, pool, nms_thresh=0.5, atol=1e-8).tolist() == [True] * 5


def test_bad_arguments_are_refused_clearly(exported, tmp_path):
    det, _, _ = exported("retinanet")
    size = SIZES["retinanet"]
    with pytest.raises(ValueError, match="letterboxes to 96"):
        export_detector_onnx(det, tmp_path / "a.onnx", image_size=128)
    with pytest.raises(ValueError, match="2 class_names for a detector with 3 classes"):
        export_detector_onnx(det, tmp_path / "a.onnx", image_size=size, class_names=["a", "b"])
    with pytest.raises(ValueError, match="set by export_detector_onnx"):
        export_detector_onnx(det, tmp_path / "a.onnx", image_size=size, metadata={"label_names": []})
    with pytest.raises(ValueError, match="opset"):
        export_detector_onnx(det, tmp_path / "a.onnx", image_size=size, opset=9)
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="not written by b4transfer"):
        export_detector_onnx(det, foreign, image_size=size)
    assert foreign.read_bytes() == b"not ours"
    with pytest.raises(ValueError, match=r"\(3, 96, 96\)"):
        check_detector_onnx(det, tmp_path / "a.onnx", [torch.rand(3, 64, 64)])
    with pytest.raises(TypeError, match="RetinaNet, FCOS or FasterRCNN"):
        export_detector_onnx(torch.nn.Linear(2, 2), tmp_path / "a.onnx", image_size=size)


def test_no_detector_is_refused_and_unknown_names_are_errors():
    assert all(onnx_export_refusal(name) is None for name in DETECTORS)
    with pytest.raises(ValueError, match="Unknown detector"):
        onnx_export_refusal("yolo")


@pytest.mark.parametrize("name", DETECTORS)
def test_int8_graph_runs_with_onnxruntime_s_default_optimisations(exported, tmp_path, name):
    """Regression: torchvision's box clipping ends in ``reshape(boxes.shape)``, which onnxruntime's
    ReshapeFusion turned into ``(0, -1)``; a quantised graph (a pyramid level without candidates) then
    failed at that Reshape. The export clips without a reshape, so the INT8 file runs as users run it."""
    from b4transfer.runtime.runtimes import quantize_int8

    _, path, _ = exported(name)
    calibration = ({"image": x[None].numpy()} for x in _canvases(SIZES[name], 4, seed=1))
    q = quantize_int8(path, tmp_path / "int8.onnx", calibration, op_types=("Conv",))
    session = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])  # default: ORT_ENABLE_ALL
    for x in _canvases(SIZES[name], 3):
        boxes, scores, labels = session.run(None, {"image": x[None].numpy()})
        assert boxes.shape == (len(scores), 4) and len(labels) == len(scores)
