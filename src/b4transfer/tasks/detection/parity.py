"""Detection exports beyond the state dict / ONNX (OpenVINO IR, from the checked ONNX export), and the
parity check: the validation canvases scored through each artefact's own runtime with COCO mAP
(torchmetrics), to compare with the PyTorch model. Every runtime gets the same letterboxed 0..1
canvases: the normalisation, box decoding and NMS are inside each artefact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from b4transfer.data.loaders import fill_colour
from b4transfer.export.artifacts import ONNX_NAME
from b4transfer.runtime.runtimes import INT8_NAME, open_runtime, quantize_int8, to_openvino
from b4transfer.tasks.detection.data.datamodule import DetectionPathDataset
from b4transfer.tasks.detection.export import export_detection_onnx, load_exported_detector
from b4transfer.tasks.detection.onnx_graph import INPUT_NAME, label_offset

__all__ = ["export_int8", "export_openvino", "score_detector"]


def ensure_onnx(module, out_dir: Path, opset: int, check_images) -> Path:
    path = Path(out_dir) / ONNX_NAME
    if not path.is_file():
        export_detection_onnx(module, out_dir, opset=opset, check_images=check_images)
    return path


def export_openvino(module, out_dir: Path, *, opset: int, check_images=None) -> dict[str, Any]:
    """``export.format=openvino``: ``model.xml`` + ``model.bin`` from the (checked) ONNX export."""
    xml = to_openvino(ensure_onnx(module, out_dir, opset, check_images), out_dir)
    return {"openvino": {"path": str(xml)}}


def export_int8(module, out_dir: Path, *, opset: int, calibration, check_images=None) -> dict[str, Any]:
    """``export.format=onnx_int8``: ``model_int8.onnx``, the (checked) ONNX export with its convolutions
    statically quantised (QDQ, per-channel int8 weights), calibrated on ``calibration`` images
    letterboxed to the model's canvas one by one, as the graph takes them.

    Left in float: the stem convolution (the first: it sees the normalised image; quantising it cost a
    trained detector 0.009 of its 0.099 mAP, docs/studies/export-parity.md) and everything that is not a
    convolution — box decoding, the score threshold and NMS (the fully quantised graph crashed
    onnxruntime's optimiser)."""
    import onnx

    onnx_path = ensure_onnx(module, out_dir, opset, check_images)
    stem = next(n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv")
    fill = fill_colour(module.data_config["eval"]["mean"])
    dataset = DetectionPathDataset(list(calibration), module.image_size, fill)
    inputs = ({INPUT_NAME: dataset[i][0][None].numpy()} for i in range(len(dataset)))
    path = quantize_int8(onnx_path, Path(out_dir) / INT8_NAME, inputs, op_types=("Conv",), keep_float=(stem,))
    return {"onnx_int8": {"path": str(path), "calibration_images": len(dataset), "quantised": "Conv",
                          "float": [stem]}}


@torch.no_grad()
def score_detector(fmt: str, module, out_dir: Path, loader) -> dict[str, Any]:
    """COCO mAP on ``loader`` (the validation canvases and targets) of export ``fmt`` (``pytorch``: the
    module itself; ``timm``: the exported state dict rebuilt as a torchvision detector)."""
    module.eval().cpu()
    if fmt == "pytorch":
        def detect(x):
            return module.head([x])[0]
    elif fmt == "timm":
        detector, _ = load_exported_detector(out_dir)
        offset = label_offset(detector)

        def detect(x):
            d = detector([x])[0]
            return {**d, "labels": d["labels"] - offset}
    else:
        runtime = open_runtime(fmt, out_dir)

        def detect(x):
            boxes, scores, labels = (torch.from_numpy(a) for a in runtime({INPUT_NAME: x[None].numpy()}))
            return {"boxes": boxes.float(), "scores": scores.float(), "labels": labels.long()}

    metric, n = module.head.build_metrics(), 0
    for images, targets in loader:
        preds = [detect(x.cpu()) for x in images]
        metric.update(*module.head.metric_inputs(preds, targets))
        n += len(images)
    values = metric.compute()
    return {"metric": "val/map", "value": round(float(values["map"]), 6),
            "map_50": round(float(values["map_50"]), 6), "images": n}
