"""ONNX export of a torchvision detector (RetinaNet, FCOS, Faster R-CNN), checked with onnxruntime.

:func:`export_detector_onnx` writes the *whole* standalone detector that
:func:`~b4transfer.heads.detection.build_detector` (``own_body=True``) or
:func:`~b4transfer.export_detection.load_exported_detector` gives — normalisation, the timm body,
FPN, heads, box decoding, score threshold, NMS and the top-k cut — as one ONNX graph:

- input ``image``: ``(1, 3, S, S)`` float32 RGB in ``0..1``, **a batch of one** at the letterbox
  canvas size ``S`` (``image_size``; fixed, like the data's eval letterbox: the longer side resized to
  ``S``, aspect ratio kept, bottom/right padded with ``pad_fill``). Do not normalise: the graph does.
- outputs ``boxes`` ``(n, 4)`` float32 ``x1, y1, x2, y2`` in canvas pixels; ``scores`` ``(n,)``
  float32, descending; ``labels`` ``(n,)`` int64, **0-based** indices into ``label_names`` for every
  detector (Faster R-CNN's background class 0 is removed inside the graph). ``n`` is 0 up to
  ``detections_per_img``; the detector's ``score_thresh`` and ``nms_thresh`` are baked in.
- metadata (``onnx.load(path).metadata_props``, every value JSON; decode them all with
  :func:`b4transfer.onnx_export.onnx_metadata`): ``label_names``, ``image_size``, ``detector``,
  ``mean`` / ``std`` (applied inside), ``pad_fill`` (letterbox padding, RGB 0..255),
  ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``input`` / ``outputs`` (descriptions),
  whatever ``metadata=`` adds, and the b4transfer version.

It uses PyTorch's TorchScript-based exporter (``dynamo=False``, which needs no ``onnxscript``), as
torchvision's own ONNX tests do; all three detectors export at opset 11..21 (default 17), so
:func:`onnx_export_refusal` refuses none of them today. :func:`check_detector_onnx` runs the file
with onnxruntime and the PyTorch detector on the same canvases and requires every confident PyTorch
box to be found by ONNX (same label, IoU >= 0.99, score within 1e-3).

Running the exported model::

    import json, numpy as np, onnx, onnxruntime as ort
    from PIL import Image

    meta = {p.key: json.loads(p.value) for p in onnx.load("model.onnx").metadata_props
            if p.key != "b4transfer_version"}
    size, names = meta["image_size"], meta["label_names"]
    img = Image.open("photo.jpg").convert("RGB")
    scale = size / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("RGB", (size, size), tuple(meta["pad_fill"]))
    canvas.paste(img.resize((w, h), Image.BILINEAR), (0, 0))  # top-left, pad bottom/right
    x = np.asarray(canvas, np.float32).transpose(2, 0, 1)[None] / 255.0  # (1, 3, S, S), 0..1
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"image": x})
    sx, sy = w / img.width, h / img.height
    boxes_in_photo = np.minimum(boxes / [sx, sy, sx, sy], [img.width, img.height] * 2)  # canvas -> photo
    found = [(names[k], float(s), b) for b, s, k in zip(boxes_in_photo, scores, labels) if s >= 0.3]

Needs ``onnx`` and ``onnxruntime`` (``pip install "b4transfer[onnx]"``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

from b4transfer import __version__
from b4transfer.export import _MARKER, _atomic_write
from b4transfer.heads.detection import DETECTORS
from b4transfer.onnx_export import _claim, _require_onnx

log = logging.getLogger(__name__)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "check_detector_onnx",
    "detector_name",
    "export_detector_onnx",
    "onnx_export_refusal",
]

INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")
_RESERVED = {
    "label_names",
    "image_size",
    "detector",
    "mean",
    "std",
    "pad_fill",
    "score_thresh",
    "nms_thresh",
    "detections_per_img",
    "input",
    "outputs",
    _MARKER,
}
# Why a detector cannot be exported, by b4transfer detector name; None: it can. All three export with
# torch 2.x's TorchScript exporter and torchvision's ONNX-aware code paths (NMS, RoIAlign, top-k).
_REFUSALS: dict[str, str | None] = {"retinanet": None, "fcos": None, "faster_rcnn": None}


def onnx_export_refusal(detector_name: str) -> str | None:
    """Why ``head.detector=<detector_name>`` cannot be exported to ONNX (with alternatives), or ``None``.

    For a config check before training: ``export.format=onnx`` with a refused detector should fail
    at once with this text. Every b4transfer detector (``retinanet``, ``fcos``, ``faster_rcnn``)
    exports today, so this returns ``None`` for all of them.

    Raises:
        ValueError: ``detector_name`` is not a b4transfer detector.
    """
    if detector_name not in _REFUSALS:
        raise ValueError(f"Unknown detector {detector_name!r}; choose one of {list(DETECTORS)}.")
    return _REFUSALS[detector_name]


def detector_name(detector: nn.Module) -> str:
    """``retinanet`` / ``fcos`` / ``faster_rcnn`` for a torchvision detector built by ``build_detector``."""
    for name, cls in (("faster_rcnn", FasterRCNN), ("retinanet", RetinaNet), ("fcos", FCOS)):
        if isinstance(detector, cls):
            return name
    raise TypeError(
        f"Expected a torchvision RetinaNet, FCOS or FasterRCNN (build_detector(..., own_body=True) or "
        f"load_exported_detector), got {type(detector).__name__}."
    )


def _num_classes(detector: nn.Module) -> int:
    if isinstance(detector, FasterRCNN):
        return detector.roi_heads.box_predictor.cls_score.out_features - 1  # minus background
    return detector.head.classification_head.num_classes


def _label_offset(detector: nn.Module) -> int:
    return 1 if isinstance(detector, FasterRCNN) else 0


def _settings(detector: nn.Module) -> dict[str, Any]:
    src = detector.roi_heads if isinstance(detector, FasterRCNN) else detector
    return {
        "score_thresh": float(src.score_thresh),
        "nms_thresh": float(src.nms_thresh),
        "detections_per_img": int(src.detections_per_img),
    }


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _canvas_size(detector: nn.Module) -> int:
    t = detector.transform
    if len(t.min_size) != 1 or t.min_size[0] != t.max_size:
        raise ValueError(
            f"The detector's transform resizes to min_size={t.min_size}, max_size={t.max_size}; an ONNX "
            "export needs one square letterbox size (build_detector sets both to image_size)."
        )
    return int(t.max_size)


class OnnxDetector(nn.Module):
    """``(1, 3, S, S)`` 0..1 canvas -> ``(boxes, scores, labels)`` with 0-based labels: the exported graph."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.label_offset = _label_offset(detector)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        det = self.detector([image[0]])[0]
        labels = det["labels"] - self.label_offset if self.label_offset else det["labels"]
        return det["boxes"], det["scores"], labels


def export_detector_onnx(
    detector: nn.Module,
    path: str | Path,
    *,
    image_size: int,
    opset: int = 17,
    class_names: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    check_images: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Write the whole detector, pre- and post-processing included, to ``path`` as ONNX.

    Args:
        detector: A torchvision ``RetinaNet`` / ``FCOS`` / ``FasterRCNN`` from ``build_detector(...,
            own_body=True)`` or ``load_exported_detector``, on any device (a CPU copy is exported;
            its train/eval mode is restored afterwards).
        path: The ``.onnx`` file; a file there that b4transfer did not write is never overwritten.
        image_size: The letterbox canvas side ``S`` (must be the detector's transform size).
        opset: ONNX opset version, 11..21.
        class_names: Name of each 0-based label (``None``: ``"0"``, ``"1"``, ...); stored as
            ``label_names``.
        metadata: More metadata entries (JSON-serialisable values, stored JSON-encoded), e.g.
            ``{"category_ids": [...]}``.
        check_images: If given, run :func:`check_detector_onnx` on them; on failure the file is removed
            and the error raised. Its report is added under ``"check"``.

    Returns:
        ``{"path", "opset", "detector", "image_size", "input", "outputs"}`` (+ ``"check"``).
    """
    onnx, _ = _require_onnx()
    name = detector_name(detector)
    reason = onnx_export_refusal(name)
    if reason:
        raise ValueError(reason)
    if not isinstance(opset, int) or isinstance(opset, bool) or not 11 <= opset <= 21:
        raise ValueError(f"export.onnx_opset must be an integer opset in 11..21, got {opset!r}.")
    size = _canvas_size(detector)
    if image_size != size:
        raise ValueError(
            f"image_size={image_size!r} but the detector letterboxes to {size} (its transform's size); "
            "export at the size it was built for."
        )
    num_classes = _num_classes(detector)
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class_names for a detector with {num_classes} classes.")
    extra = dict(metadata or {})
    clash = sorted(set(extra) & _RESERVED)
    if clash:
        raise ValueError(f"metadata keys {clash} are set by export_detector_onnx; rename them.")
    mean = [float(v) for v in detector.transform.image_mean]
    std = [float(v) for v in detector.transform.image_std]
    entries = {
        "label_names": names,
        "image_size": size,
        "detector": name,
        "mean": mean,
        "std": std,
        "pad_fill": [round(255 * m) for m in mean],
        **_settings(detector),
        "input": f"{INPUT_NAME}: (1, 3, {size}, {size}) float32 RGB 0..1, letterboxed (top-left), "
        "not normalised",
        "outputs": "boxes: (n, 4) float32 xyxy canvas pixels; scores: (n,) float32 descending; "
        "labels: (n,) int64 0-based index into label_names",
        **extra,
    }
    try:
        encoded = {k: json.dumps(v) for k, v in entries.items()}
    except TypeError as e:
        raise TypeError(f"metadata values must be JSON-serialisable: {e}") from e
    encoded[_MARKER] = __version__

    path = Path(path)
    _claim(path, onnx)
    source = detector if _device(detector).type == "cpu" else copy.deepcopy(detector).cpu()
    wrapper = OnnxDetector(source)
    mode = source.training
    source.eval()
    dummy = torch.zeros(1, 3, size, size)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter's notice
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # torchvision's, expected
            warnings.filterwarnings("ignore", message=".*ONNX.*", category=UserWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")  # tracing notes
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
            _atomic_write(path, lambda p: _export(wrapper, dummy, p, opset))
    finally:
        source.train(mode)
    proto = onnx.load(str(path))
    for key, value in encoded.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    _atomic_write(path, lambda p: onnx.save(proto, str(p)))
    report: dict[str, Any] = {
        "path": str(path),
        "opset": opset,
        "detector": name,
        "image_size": size,
        "input": entries["input"],
        "outputs": entries["outputs"],
    }
    if check_images is not None:
        try:
            report["check"] = check_detector_onnx(detector, path, check_images)
        except Exception:
            path.unlink(missing_ok=True)
            raise
    log.info("ONNX detector export %s (%s, opset %d)", path, name, opset)
    return report


def _export(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={k: {0: "detections"} for k in OUTPUT_NAMES},
        )


def _as_canvases(images, size: int) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        images = list(images) if images.dim() == 4 else [images]
    out = []
    for i, img in enumerate(images):
        img = torch.as_tensor(img)
        if img.dim() == 4 and len(img) == 1:
            img = img[0]
        if tuple(img.shape) != (3, size, size):
            raise ValueError(
                f"images[{i}] has shape {tuple(img.shape)}; the check needs (3, {size}, {size}) letterbox "
                "canvases, 0..1 floats (or an (N, 3, S, S) batch)."
            )
        out.append(img.detach().float().cpu())
    if not out:
        raise ValueError("check_detector_onnx needs at least one image.")
    return out


@torch.no_grad()
def check_detector_onnx(
    detector: nn.Module,
    path: str | Path,
    images: torch.Tensor | Sequence[torch.Tensor],
    *,
    min_score: float = 0.05,
    iou: float = 0.99,
    score_atol: float = 1e-3,
    box_atol: float = 0.05,
    min_matched: float = 1.0,
    min_boxes: int = 1,
) -> dict[str, Any]:
    """Run ``path`` with onnxruntime and ``detector`` in PyTorch fp32 eager on the same canvases.

    Every PyTorch box with score >= ``min_score`` must be matched (one to one, best IoU first) by an
    ONNX box with the same label, IoU >= ``iou`` and a score within ``score_atol``. For a box under
    1 px wide or high (e.g. clipped to the canvas edge), where IoU is undefined (0/0) or unstable,
    every coordinate within ``box_atol`` pixels stands in for the IoU. Boxes whose
    presence legitimately depends on rounding are not required: scores within ``score_atol`` of the
    detector's ``score_thresh``, and, when an image's list is full (``detections_per_img`` boxes),
    scores within ``score_atol`` of its lowest one (the top-k cut).

    Args:
        detector: The PyTorch detector the file was exported from (eval mode is used, then restored).
        path: The ``.onnx`` file from :func:`export_detector_onnx`.
        images: ``(3, S, S)`` canvases (0..1), a sequence of them or an ``(N, 3, S, S)`` batch.
        min_score: Confidence above which PyTorch boxes must be matched.
        iou: Smallest IoU of a match.
        score_atol: Largest score difference of a match.
        box_atol: Largest coordinate difference (pixels) of a match for a sub-pixel-thin box.
        min_matched: Smallest share of required boxes that must be matched.
        min_boxes: Fewest required boxes; fewer raise (the check would prove nothing). 0 allows none.

    Returns:
        ``{"images", "boxes", "matched", "matched_share", "thin_boxes", "max_score_diff", "min_iou",
        "max_box_diff", "onnx_boxes", "torch_boxes", "min_score", "iou", "score_atol"}`` (``boxes``:
        required PyTorch boxes; ``thin_boxes``: those under 1 px wide or high, matched by
        coordinates; ``min_iou``: over the other matches; ``*_boxes``: all boxes each runtime
        returned).

    Raises:
        RuntimeError: Fewer than ``min_boxes`` required boxes, or a matched share below ``min_matched``.
    """
    from torchvision.ops import box_iou

    _, ort = _require_onnx()
    size = _canvas_size(detector)
    canvases = _as_canvases(images, size)
    settings = _settings(detector)
    floor = max(float(min_score), settings["score_thresh"] + score_atol)
    offset = _label_offset(detector)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mode, device = detector.training, _device(detector)
    detector.eval()
    try:
        refs = [{k: v.cpu() for k, v in detector([x.to(device)])[0].items()} for x in canvases]
    finally:
        detector.train(mode)

    required = matched = thin = onnx_total = torch_total = 0
    max_score_diff = max_box_diff = 0.0
    min_iou = 1.0
    misses: list[str] = []
    for i, (x, ref) in enumerate(zip(canvases, refs)):
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[None].numpy()})
        boxes, scores, labels = (torch.from_numpy(g) for g in got)
        ref_labels = ref["labels"] - offset
        onnx_total += len(boxes)
        torch_total += len(ref["boxes"])
        need = ref["scores"] >= floor
        if len(ref["scores"]) >= settings["detections_per_img"]:
            need &= ref["scores"] > ref["scores"].min() + score_atol
        taken = torch.zeros(len(boxes), dtype=torch.bool)
        ious = close = None
        if len(boxes) and len(ref["boxes"]):
            ious = box_iou(ref["boxes"], boxes).nan_to_num(0.0)
            close = torch.cdist(ref["boxes"], boxes, p=math.inf) <= box_atol
        sides = ref["boxes"][:, 2:] - ref["boxes"][:, :2]
        for j in torch.nonzero(need).flatten().tolist():
            required += 1
            is_thin = bool(sides[j].min() < 1.0)
            thin += is_thin
            ok = torch.zeros(len(boxes), dtype=torch.bool)
            if ious is not None:
                ok = (
                    ~taken
                    & (labels == ref_labels[j])
                    & (close[j] if is_thin else ious[j] >= iou)
                    & ((scores - ref["scores"][j]).abs() <= score_atol)
                )
            if not ok.any():
                if len(misses) < 5:
                    misses.append(
                        f"image {i}: label {int(ref_labels[j])} score {float(ref['scores'][j]):.4f} "
                        f"box {[round(v, 1) for v in ref['boxes'][j].tolist()]}"
                    )
                continue
            diff = (boxes - ref["boxes"][j]).abs().amax(1)
            k = int(torch.where(ok, -diff if is_thin else ious[j], torch.tensor(-math.inf)).argmax())
            taken[k] = True
            matched += 1
            max_score_diff = max(max_score_diff, float((scores[k] - ref["scores"][j]).abs()))
            max_box_diff = max(max_box_diff, float(diff[k]))
            if not is_thin:
                min_iou = min(min_iou, float(ious[j, k]))
    share = matched / required if required else math.nan
    report = {
        "images": len(canvases),
        "boxes": required,
        "matched": matched,
        "matched_share": share,
        "thin_boxes": thin,
        "max_score_diff": max_score_diff,
        "min_iou": min_iou,
        "max_box_diff": max_box_diff,
        "onnx_boxes": onnx_total,
        "torch_boxes": torch_total,
        "min_score": floor,
        "iou": iou,
        "score_atol": score_atol,
    }
    if required < min_boxes:
        raise RuntimeError(
            f"{path}: the PyTorch detector finds only {required} box(es) with score >= {floor:.3g} on "
            f"{len(canvases)} image(s) (need {min_boxes}), so the ONNX check would prove nothing. Pass "
            "images with objects, a lower min_score, or min_boxes=0 to accept an unchecked export."
        )
    if required and share < min_matched:
        raise RuntimeError(
            f"{path}: onnxruntime matches only {matched}/{required} PyTorch boxes with score >= {floor:.3g} "
            f"(same label, IoU >= {iou}, score within {score_atol}); need {min_matched:.0%}. First misses: "
            f"{'; '.join(misses)}. The export is wrong; report it with your torch/torchvision/onnx/"
            "onnxruntime versions, or use export.format=timm (load_exported_detector)."
        )
    log.info("ONNX detector check %s: %s", path, report)
    return report
