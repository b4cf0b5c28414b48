"""ONNX export of a torchvision detector (RetinaNet, FCOS, Faster R-CNN), checked with onnxruntime.

:func:`export_detector_onnx` writes the *whole* standalone detector that
:func:`~b4transfer.tasks.detection.head.build_detector` (``own_body=True``) or
:func:`~b4transfer.tasks.detection.export.load_exported_detector` gives — normalisation, the timm body,
FPN, heads, box decoding, score threshold, NMS and the top-k cut — as one ONNX graph:

- input ``image``: ``(1, 3, S, S)`` float32 RGB in ``0..1``, **a batch of one** at the letterbox
  canvas size ``S`` (``image_size``; fixed, like the data's eval letterbox: the longer side resized to
  ``S``, aspect ratio kept, bottom/right padded with ``pad_fill``). Do not normalise: the graph does.
- outputs ``boxes`` ``(n, 4)`` float32 ``x1, y1, x2, y2`` in canvas pixels; ``scores`` ``(n,)``
  float32, descending; ``labels`` ``(n,)`` int64, **0-based** indices into ``label_names`` for every
  detector (Faster R-CNN's background class 0 is removed inside the graph). ``n`` is 0 up to
  ``detections_per_img``; the detector's ``score_thresh`` and ``nms_thresh`` are baked in.
- metadata (``onnx.load(path).metadata_props``, every value JSON; decode them all with
  :func:`b4transfer.tasks.classification.onnx_export.onnx_metadata`):
  ``label_names``, ``image_size``, ``detector``,
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

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import boxes as box_ops

from b4transfer.errors import UserError
from b4transfer.export.artifacts import MARKER, check_opset, trace_graph, write_onnx
from b4transfer.tasks.detection.onnx_check import check_detector_onnx
from b4transfer.tasks.detection.onnx_graph import (
    INPUT_NAME,
    OUTPUT_NAMES,
    OnnxDetector,
    canvas_size,
    detector_name,
    detector_settings,
    module_device,
    num_classes,
    onnx_export_refusal,
)

log = logging.getLogger(__name__)

__all__ = ["check_detector_onnx", "export_detector_onnx", "onnx_export_refusal"]

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
    MARKER,
}


def export_detector_onnx(
    detector: nn.Module,
    path: str | Path,
    *,
    image_size: int,
    opset: int | None = None,
    class_names: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    check_images: torch.Tensor | Sequence[torch.Tensor] | None = None,
    check_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the whole detector, pre- and post-processing included, to ``path`` as ONNX.

    Args:
        detector: A torchvision ``RetinaNet`` / ``FCOS`` / ``FasterRCNN`` from ``build_detector(...,
            own_body=True)`` or ``load_exported_detector``, on any device (a CPU copy is exported;
            its train/eval mode is restored afterwards).
        path: The ``.onnx`` file; a file there that b4transfer did not write is never overwritten.
        image_size: The letterbox canvas side ``S`` (must be the detector's transform size).
        opset: ONNX opset version, 11..21 (``None``: ``export.onnx_opset``'s default).
        class_names: Name of each 0-based label (``None``: ``"0"``, ``"1"``, ...); stored as
            ``label_names``.
        metadata: More metadata entries (JSON-serialisable values, stored JSON-encoded), e.g.
            ``{"category_ids": [...]}``.
        check_images: If given, run :func:`check_detector_onnx` on them; on failure the file is removed
            and the error raised. Its report is added under ``"check"``.
        check_options: More arguments of :func:`check_detector_onnx` (``min_score``, ``min_boxes``, ...).

    Returns:
        ``{"path", "opset", "detector", "image_size", "input", "outputs"}`` (+ ``"check"``).
    """
    name = detector_name(detector)
    reason = onnx_export_refusal(name)
    if reason:
        raise UserError(reason)
    opset = check_opset(opset)
    size = canvas_size(detector)
    if image_size != size:
        raise UserError(
            f"image_size={image_size!r} but the detector letterboxes to {size} (its transform's size); "
            "export at the size it was built for."
        )
    count = num_classes(detector)
    names = [str(i) for i in range(count)] if class_names is None else [str(c) for c in class_names]
    if len(names) != count:
        raise UserError(f"{len(names)} class_names for a detector with {count} classes.")
    extra = dict(metadata or {})
    clash = sorted(set(extra) & _RESERVED)
    if clash:
        raise UserError(f"metadata keys {clash} are set by export_detector_onnx; rename them.")
    mean = [float(v) for v in detector.transform.image_mean]
    std = [float(v) for v in detector.transform.image_std]
    entries = {
        "label_names": names,
        "image_size": size,
        "detector": name,
        "mean": mean,
        "std": std,
        "pad_fill": [round(255 * m) for m in mean],
        **detector_settings(detector),
        "input": f"{INPUT_NAME}: (1, 3, {size}, {size}) float32 RGB 0..1, letterboxed (top-left), "
        "not normalised",
        "outputs": "boxes: (n, 4) float32 xyxy canvas pixels; scores: (n,) float32 descending; "
        "labels: (n,) int64 0-based index into label_names",
        **extra,
    }
    source = detector if module_device(detector).type == "cpu" else copy.deepcopy(detector).cpu()

    def check(p: Path) -> dict:
        return {} if check_images is None else {
            "check": check_detector_onnx(detector, p, check_images, **(check_options or {}))
        }

    checked = write_onnx(
        path, lambda p, opset: _export(source, p, opset), opset=opset, metadata=entries, check=check
    )
    log.info("ONNX detector export %s (%s, opset %d)", path, name, opset)
    return {
        "path": str(path),
        "opset": opset,
        "detector": name,
        "image_size": size,
        "input": entries["input"],
        "outputs": entries["outputs"],
        **checked,
    }


def _clip_boxes(boxes: torch.Tensor, size) -> torch.Tensor:
    """torchvision's ``clip_boxes_to_image`` without its final ``reshape(boxes.shape)``.

    Traced, that reshape becomes ``Reshape(stacked, Concat(Shape(boxes)[0], Shape(boxes)[1]))``, which
    onnxruntime's ``ReshapeFusion`` rewrites to the shape ``(0, -1)``: on an empty candidate set (a
    pyramid level with no score above the threshold, common in a quantised graph) ``-1`` is undefined
    and the run fails. Clamping each coordinate and stacking on the last axis gives the same boxes with
    no reshape in the graph.
    """
    height, width = size
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    w = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    h = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    coords = [torch.min(torch.max(boxes[..., i], zero), w if i % 2 == 0 else h) for i in range(4)]
    return torch.stack(coords, dim=-1)


@contextlib.contextmanager
def _reshape_free_box_clipping() -> Iterator[None]:
    """While exporting, torchvision's detectors (which call ``box_ops.clip_boxes_to_image``) use
    :func:`_clip_boxes`."""
    original = box_ops.clip_boxes_to_image
    box_ops.clip_boxes_to_image = _clip_boxes
    try:
        yield
    finally:
        box_ops.clip_boxes_to_image = original


def _export(source: nn.Module, path: Path, opset: int) -> None:
    """The detector ``source`` (on the CPU) traced in eval mode to ``path``; its mode is restored."""
    wrapper, mode = OnnxDetector(source), source.training
    source.eval()
    dummy = torch.zeros(1, 3, canvas_size(source), canvas_size(source))
    try:
        with warnings.catch_warnings(), torch.no_grad(), _reshape_free_box_clipping():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # torchvision's, expected
            warnings.filterwarnings("ignore", message=".*ONNX.*", category=UserWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")  # tracing notes
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
            trace_graph(
                wrapper, dummy, path, opset, input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
                dynamic_axes={k: {0: "detections"} for k in OUTPUT_NAMES},
            )
    finally:
        source.train(mode)
