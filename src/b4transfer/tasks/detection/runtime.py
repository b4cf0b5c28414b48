"""A detector's exports in place of its PyTorch model (``predict.runtime``, see
:mod:`b4transfer.runtime.choice`): the ONNX graph (onnxruntime), its OpenVINO IR and its INT8 ONNX each
take one letterboxed 0..1 canvas and give its boxes (canvas pixels), scores and 0-based labels, as the
module's head does, so prediction maps them back to the image and validation scores them as before.
Agreement with fp32 PyTorch: predict's ``box_agreement`` (confident boxes found by both, IoU >= 0.9)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from b4transfer.config import conf_default
from b4transfer.data.loaders import fill_colour
from b4transfer.runtime.choice import RuntimeAdapter, instance_attrs
from b4transfer.runtime.inference import InferenceSettings, fast_model
from b4transfer.tasks.detection.data.datamodule import DetectionPathDataset, collate_detection
from b4transfer.tasks.detection.onnx_graph import INPUT_NAME, detector_settings


class DetectorRuntime(RuntimeAdapter):
    """onnxruntime, OpenVINO and INT8 runs of a :class:`DetectionModule`'s exports."""

    runtimes = ("onnxruntime", "openvino", "onnx_int8")
    collate = staticmethod(collate_detection)

    def image_size(self, module) -> int:
        return int(module.image_size)

    def dataset(self, cfg: DictConfig, module, paths: Sequence[Path]):
        fill = fill_colour(module.data_config["eval"]["mean"])
        return DetectionPathDataset(list(paths), module.image_size, fill)

    def build(self, fmt: str, module, out_dir: Path, *, calibration: Sequence[Path], opset: int) -> None:
        from b4transfer.tasks.detection.export import export_detection_onnx
        from b4transfer.tasks.detection.parity import export_int8, export_openvino

        images = list(calibration) or None  # the ONNX check's images too (else seeded noise)
        if fmt == "onnx":
            export_detection_onnx(module, out_dir, opset=opset, check_images=images)
        elif fmt == "openvino":
            export_openvino(module, out_dir, opset=opset, check_images=images)
        else:
            export_int8(module, out_dir, opset=opset, calibration=list(calibration), check_images=images)

    def patch(self, module, run: Callable) -> contextlib.AbstractContextManager:
        head, original = module.head, module.head.forward
        thresh, size = detector_settings(head.detector)["score_thresh"], module.image_size

        def forward(images, targets=None):  # eval: one canvas at a time, as the graph takes them
            if head.detector.training:
                return original(images, targets)
            out = []
            for x in images:
                got = run({INPUT_NAME: x[None].detach().float().cpu().contiguous().numpy()})
                boxes, scores = (torch.from_numpy(a).float() for a in got[:2])
                keep = plausible(boxes, scores, size=size, score_thresh=thresh)
                labels = torch.from_numpy(got[2]).long()[keep]
                out.append({"boxes": boxes[keep].to(x.device), "scores": scores[keep].to(x.device),
                            "labels": labels.to(x.device)})
            return out

        return instance_attrs(head, forward=forward)

    @contextlib.contextmanager
    def torch_context(self, module, *, settings: InferenceSettings, precision: str, device) -> Iterator[None]:
        from b4transfer.tasks.detection.predict import bf16_detector

        kind = torch.device(device).type
        bf16 = bf16_detector(module, kind) if precision == "bf16" else contextlib.nullcontext()
        with fast_model(module, channels_last=settings.channels_last, compile=settings.compile), bf16:
            yield

    def compare(self, cfg: DictConfig, module, reference: list, fast: list) -> dict[str, Any]:
        from b4transfer.tasks.detection.predict import box_agreement

        ref = sorted((d for batch in reference for d in batch), key=lambda d: d["index"])
        got = sorted((d for batch in fast for d in batch), key=lambda d: d["index"])
        min_score = (cfg.get("predict") or {}).get("draw_score_thresh")
        min_score = float(conf_default("predict.draw_score_thresh") if min_score is None else min_score)
        matched, total = box_agreement(ref, got, min_score=min_score, iou=0.9)
        share = matched / total if total else None  # nothing confident to compare: unchecked
        return {"images": len(ref), "boxes_compared": total, "box_agreement": share, "min_score": min_score,
                "iou": 0.9, "agreement": share}


def plausible(boxes: torch.Tensor, scores: torch.Tensor, *, size: int, score_thresh: float) -> torch.Tensor:
    """Which detections are real: finite, scored in ``[score_thresh, 1]``, inside the canvas. OpenVINO
    (2026.4) returns one detection of uninitialised memory where the graph finds none; every detection the
    graph makes passes (torchvision clips boxes to the canvas and drops scores under the threshold)."""
    finite = torch.isfinite(boxes).all(1) & torch.isfinite(scores)
    inside = ((boxes >= -1e-3) & (boxes <= size + 1e-3)).all(1) & (boxes[:, 2:] >= boxes[:, :2]).all(1)
    return finite & inside & (scores >= score_thresh - 1e-6) & (scores <= 1 + 1e-6)


ADAPTER = DetectorRuntime()
