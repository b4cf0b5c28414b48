"""``mode=predict`` with a detection checkpoint: COCO results JSON, and drawn PNGs on request.

Writes into the run directory:

* ``detections.json`` — COCO results (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``,
  ``score``), boxes in original-image pixels, category ids of the training data;
* ``images.json`` — the predicted images as a COCO ``images`` + ``categories`` file, so that
  ``COCO("images.json").loadRes("detections.json")`` works without ground truth (each image's ``drawn``
  file too, with ``predict.draw=true``);
* with ``predict.draw=true``, ``predict_drawn/<image's relative path>.png`` with boxes, labels and scores
  drawn (those scoring at least ``predict.draw_score_thresh``); inputs that differ only by their extension
  keep it (``x.jpg.png``, ``x.png.png``: :func:`b4transfer.runtime.inference.output_names`).

Image ids are 1..N in file order, or with ``predict.coco_json=FILE`` the ids that file gives the
images (matched by ``file_name`` relative to ``predict.input``), so the results evaluate against it.

Speed: the same ``predict.*`` switches as classification (:mod:`b4transfer.runtime.inference`): channels_last
weights (1.4x for B4 RetinaNet at 512 px on a 2-core AVX512 CPU, same boxes), bf16 autocast where the
hardware runs it natively — for the **timm body only**: its feature maps go to the FPN and the
detector heads in fp32, so box regression, decoding and NMS keep fp32 precision (bf16 has 8 bits of
mantissa: coordinates near 640 px would round to 4 px; see :func:`bf16_detector` for the heads) — and
``torch.compile`` of the body. With
reduced precision or compilation the first ``predict.check_agreement`` images are run again in fp32
eager and ``summary.json`` reports ``box_agreement``: the share of confident boxes (score >=
``predict.draw_score_thresh``) of either run that the other run also finds (same class, IoU >= 0.9).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.utils import draw_bounding_boxes

from b4transfer.config import conf_default, num_workers, plain
from b4transfer.data.coco import load_json
from b4transfer.data.images import load_rgb, upright_size
from b4transfer.data.loaders import fill_colour
from b4transfer.errors import UserError
from b4transfer.runtime.inference import (
    MIN_AGREEMENT,
    InferenceSettings,
    output_names,
    predict_outputs,
)
from b4transfer.tasks.detection.data.datamodule import DetectionPathDataset, collate_detection
from b4transfer.tasks.detection.onnx_graph import detector_settings
from b4transfer.tasks.detection.slicing import TileDataset, check_slice

log = logging.getLogger(__name__)

_PALETTE = [
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#800000",
    "#aaffc3",
    "#808000",
    "#000075",
]


def image_ids(paths: list[Path], source: str | Path, coco_json: str | Path | None) -> list[int]:
    """1..N, or the ids ``coco_json`` gives the images (``file_name`` relative to ``source``, or the name)."""
    if coco_json in (None, ""):
        return list(range(1, len(paths) + 1))
    path = Path(coco_json).expanduser()
    data = load_json(path, "predict.coco_json")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f"predict.coco_json={str(coco_json)!r} has no 'images' list. Fix: pass a COCO JSON.")
    by_name = {str(img.get("file_name")): img.get("id") for img in images if isinstance(img, dict)}
    by_base = {Path(name).name: iid for name, iid in by_name.items()}
    root = Path(source).expanduser()
    ids = []
    for p in paths:
        rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
        iid = by_name.get(rel, by_base.get(p.name))
        if iid is None:
            raise UserError(
                f"predict.coco_json={str(coco_json)!r} lists no image {rel!r} (from predict.input). "
                "Fix: predict "
                "on the folder that file's 'file_name' entries are relative to, or drop predict.coco_json."
            )
        ids.append(int(iid))
    return ids


class Bf16Part(torch.nn.Module):
    """A timm feature extractor run under bf16 autocast whose maps come back in fp32."""

    def __init__(self, part: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.part, self.device_type = part, device_type

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            maps = self.part(x)
        return [m.float() for m in maps]


@contextlib.contextmanager
def bf16_detector(module, device_type: str) -> Iterator[None]:
    """Run the timm body in bf16; the FPN, the detector heads, box decoding and NMS stay fp32.

    Measured on the B4 demo detector (letterbox 128, channels_last): bf16 also in the heads' conv
    towers was 1.4x faster still, but moved 2 % of the confident boxes to IoU < 0.7 with their fp32
    selves; with the body alone all boxes stayed at IoU >= 0.9 and COCO AP was unchanged.
    """
    body = module.backbone
    try:
        module.backbone = Bf16Part(body, device_type)
        yield
    finally:
        module.backbone = body


def run_detection_inference(
    module,
    loader: DataLoader,
    *,
    settings: InferenceSettings,
    trainer_kwargs: dict | None = None,
    min_score: float | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """Detections for every batch of ``loader`` (``(images, metas)``), in index order, and a report.

    Args:
        module: A ``DetectionModule``.
        loader: Batches of :class:`DetectionPathDataset` items, collated by ``collate_detection``.
        settings: ``predict.*`` precision / channels_last / compile / check_agreement.
        trainer_kwargs: More ``lightning.Trainer`` arguments.
        min_score: Detections from this score on count in the agreement check (``None``:
            ``predict.draw_score_thresh``'s default).

    Returns:
        ``(detections, report)``: one ``{"index", "boxes", "scores", "labels"}`` per image (boxes in
        original-image pixels), and the settings used plus the agreement with fp32 eager when checked.
    """
    outputs, report, check_on = predict_outputs(  # bf16: the body only
        module, loader, settings=settings, trainer_kwargs=trainer_kwargs, bf16_context=bf16_detector
    )
    outputs = sorted((d for batch in outputs for d in batch), key=lambda d: d["index"])
    if check_on is not None:
        if min_score is None:
            min_score = conf_default("predict.draw_score_thresh")
        report["agreement_vs_fp32"] = detection_agreement(
            module, loader.dataset, outputs, n=settings.check_agreement, device=check_on, min_score=min_score
        )
    return outputs, report


def box_agreement(
    ref: list[dict], fast: list[dict], *, min_score: float, iou: float = 0.9
) -> tuple[int, int]:
    """``(matched, total)``: confident boxes (score >= ``min_score``) of either run that the other run
    also finds (same label, IoU >= ``iou``, its score >= ``min_score - 0.1`` so that a score moving
    across the threshold is not a disagreement)."""
    from torchvision.ops import box_iou

    matched = total = 0
    for r, f in zip(ref, fast):
        for a, b in ((r, f), (f, r)):
            keep_a, keep_b = a["scores"] >= min_score, b["scores"] >= min_score - 0.1
            boxes_a, labels_a = a["boxes"][keep_a], a["labels"][keep_a]
            boxes_b, labels_b = b["boxes"][keep_b], b["labels"][keep_b]
            total += len(boxes_a)
            if len(boxes_a) and len(boxes_b):
                same = (box_iou(boxes_a, boxes_b) >= iou) & (labels_a[:, None] == labels_b[None, :])
                matched += int(same.any(1).sum())
    return matched, total


@torch.no_grad()
def detection_agreement(
    module, dataset, fast: list[dict], *, n: int, device: torch.device, min_score: float, iou: float = 0.9
) -> dict[str, Any]:
    """Re-run the first ``n`` images in fp32 eager and report :func:`box_agreement` with ``fast``."""
    module.to(device).eval()
    n = min(n, len(dataset))
    ref = []
    for i in range(n):
        image, meta = dataset[i]
        ref.append(module.predict_step(([image.to(device)], [meta]))[0])
    matched, total = box_agreement(ref, fast[:n], min_score=min_score, iou=iou)
    share = matched / total if total else 1.0
    report = {
        "images": n,
        "boxes_compared": total,
        "box_agreement": share,
        "min_score": min_score,
        "iou": iou,
    }
    if share < MIN_AGREEMENT:
        log.warning(
            "Fast inference finds only %.1f%% of the confident boxes of fp32 eager (and vice versa) on %d "
            "images. HINT: predict.precision=32 gives exact fp32 detections.",
            100 * share,
            n,
        )
    log.info("Fast inference vs fp32 eager: %s", report)
    return report


def _run(cfg: DictConfig, module, paths: list[Path]) -> tuple[list[dict], dict[str, Any]]:
    settings = InferenceSettings.from_config(plain(cfg.predict))
    fill = fill_colour(module.data_config["eval"]["mean"])
    tile, overlap = check_slice(cfg.predict.get("slice"), cfg.predict.slice_overlap)
    if tile:  # predict.slice: every tile (and the whole image) detected, merged below
        dataset = TileDataset(paths, module.image_size, fill, tile=tile, overlap=overlap)
    else:
        dataset = DetectionPathDataset(paths, module.image_size, fill)
    batch_size = int(cfg.predict.get("batch_size") or cfg.data.batch_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers(cfg),
        collate_fn=collate_detection,
    )
    detections, report = run_detection_inference(
        module,
        loader,
        settings=settings,
        trainer_kwargs={**plain(cfg.trainer), "default_root_dir": str(cfg.run_dir)},
        min_score=float(cfg.predict.draw_score_thresh),
    )
    if tile:
        nms = detector_settings(module.head.detector)  # the head's own (its defaults: build_detector's)
        iou, max_det = nms["nms_thresh"], nms["detections_per_img"]
        detections = dataset.merge(detections, iou=iou, max_det=max_det)
        report["slice"] = {"size": tile, "overlap": overlap, "tiles": len(dataset) - len(paths)}
    return detections, report


def coco_results(detections: list[dict], ids: list[int], category_ids: list[int]) -> list[dict]:
    """COCO results entries: ``[x, y, w, h]`` boxes, source category ids."""
    results = []
    for det, iid in zip(detections, ids):
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": iid,
                    "category_id": category_ids[label],
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(score, 5),
                }
            )
    return results


# Label text in white on a box-coloured background, readable over the object (torchvision >= 0.23;
# older versions draw the text in the box colour).
_LABEL_STYLE = (
    {"fill_labels": True, "label_colors": "white"}
    if "fill_labels" in inspect.signature(draw_bounding_boxes).parameters
    else {}
)


def kept(det: dict, min_score: float | list[float]) -> torch.Tensor:
    """Which detections score at least ``min_score`` (one number, or one per class)."""
    if isinstance(min_score, (int, float)):
        return det["scores"] >= min_score
    return det["scores"] >= torch.tensor(min_score, dtype=det["scores"].dtype)[det["labels"]]


def draw(path: Path, det: dict, class_names: list[str], out: Path, min_score: float | list[float]) -> None:
    """Save ``path`` with the detections scoring ``>= min_score`` (per class if a list) drawn on it."""
    image = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)
    keep = kept(det, min_score)
    labels = det["labels"][keep].tolist()
    text = [f"{class_names[lb]} {s:.2f}" for lb, s in zip(labels, det["scores"][keep].tolist())]
    colours = [_PALETTE[lb % len(_PALETTE)] for lb in labels]
    width = max(1, round(max(image.shape[-2:]) / 300))
    if text:  # torchvision warns on an empty box list
        image = draw_bounding_boxes(
            image, det["boxes"][keep], labels=text, colors=colours, width=width, **_LABEL_STYLE
        )
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(out)


def write_detections(cfg: DictConfig, module, paths: list[Path], run_dir: Path) -> dict[str, Any]:
    """Run a detection module over ``paths`` and write the results (see the module docstring)."""
    ids = image_ids(paths, cfg.predict.input, cfg.predict.get("coco_json"))
    detections, inference = _run(cfg, module, paths)
    results = coco_results(detections, ids, module.category_ids)
    (run_dir / "detections.json").write_text(json.dumps(results) + "\n")
    drawn_dir = run_dir / "predict_drawn" if cfg.predict.get("draw") else None
    drawn = (
        [drawn_dir / n for n in output_names(paths, cfg.predict.input)] if drawn_dir else [None] * len(paths)
    )
    images = []
    for p, iid, out in zip(paths, ids, drawn):
        width, height = upright_size(p)
        images.append({"id": iid, "file_name": str(p), "width": width, "height": height})
        if out is not None:
            images[-1]["drawn"] = str(out)
    categories = [{"id": c, "name": n} for c, n in zip(module.category_ids, module.class_names)]
    (run_dir / "images.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": categories}) + "\n"
    )
    thresholds = module.score_thresholds(float(cfg.predict.draw_score_thresh))
    if drawn_dir:
        for p, det, out in zip(paths, detections, drawn):
            out.parent.mkdir(parents=True, exist_ok=True)
            draw(p, det, module.class_names, out, thresholds)
    summary = {
        "detections": len(results),
        # at the per-class thresholds chosen on validation (else predict.draw_score_thresh): what is drawn
        "detections_kept": sum(int(kept(d, thresholds).sum()) for d in detections),
        "score_thresholds": dict(zip(module.class_names, thresholds)),
        "calibration_applied": module.hparams.get("calibration"),
        "predictions": str(run_dir / "detections.json"),
        "drawn": str(drawn_dir) if drawn_dir else None,
        "inference": inference,
    }
    log.info("Wrote %d detections for %d images to %s", len(results), len(paths), run_dir / "detections.json")
    return summary
