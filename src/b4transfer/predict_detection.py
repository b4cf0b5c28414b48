"""``mode=predict`` with a detection checkpoint: COCO results JSON, and drawn PNGs on request.

Writes into the run directory:

* ``detections.json`` — COCO results (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``,
  ``score``), boxes in original-image pixels, category ids of the training data;
* ``images.json`` — the predicted images as a COCO ``images`` + ``categories`` file, so that
  ``COCO("images.json").loadRes("detections.json")`` works without ground truth;
* with ``predict.draw=true``, ``predict_drawn/<image>.png`` with boxes, labels and scores drawn
  (those scoring at least ``predict.draw_score_thresh``).

Image ids are 1..N in file order, or with ``predict.coco_json=FILE`` the ids that file gives the
images (matched by ``file_name`` relative to ``predict.input``), so the results evaluate against it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.utils import draw_bounding_boxes

from b4transfer.data.coco import load_json
from b4transfer.data.detection_datamodule import DetectionPathDataset, collate_detection, fill_colour
from b4transfer.data.images import load_rgb, upright_size
from b4transfer.train import _plain, num_workers, write_summary

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
        raise ValueError(f"predict.coco_json={str(coco_json)!r} has no 'images' list. Fix: pass a COCO JSON.")
    by_name = {str(img.get("file_name")): img.get("id") for img in images if isinstance(img, dict)}
    by_base = {Path(name).name: iid for name, iid in by_name.items()}
    root = Path(source).expanduser()
    ids = []
    for p in paths:
        rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
        iid = by_name.get(rel, by_base.get(p.name))
        if iid is None:
            raise ValueError(
                f"predict.coco_json={str(coco_json)!r} lists no image {rel!r} (from predict.input). "
                "Fix: predict "
                "on the folder that file's 'file_name' entries are relative to, or drop predict.coco_json."
            )
        ids.append(int(iid))
    return ids


def _run(cfg: DictConfig, module, paths: list[Path]) -> list[dict]:
    dataset = DetectionPathDataset(paths, module.image_size, fill_colour(module.data_config["eval"]["mean"]))
    batch_size = int(cfg.predict.get("batch_size") or cfg.data.batch_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers(cfg),
        collate_fn=collate_detection,
    )
    trainer = L.Trainer(
        **{**_plain(cfg.trainer), "devices": 1, "strategy": "auto"},
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(cfg.run_dir),
    )
    outputs = [d for batch in trainer.predict(module, dataloaders=loader) for d in batch]
    return sorted(outputs, key=lambda d: d["index"])


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


def draw(path: Path, det: dict, class_names: list[str], out: Path, min_score: float) -> None:
    """Save ``path`` with the detections scoring ``>= min_score`` drawn on it."""
    image = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)
    keep = det["scores"] >= min_score
    labels = det["labels"][keep].tolist()
    text = [f"{class_names[lb]} {s:.2f}" for lb, s in zip(labels, det["scores"][keep].tolist())]
    colours = [_PALETTE[lb % len(_PALETTE)] for lb in labels]
    width = max(1, round(max(image.shape[-2:]) / 300))
    if text:  # torchvision warns on an empty box list
        image = draw_bounding_boxes(image, det["boxes"][keep], labels=text, colors=colours, width=width)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(out)


def predict_detection(
    cfg: DictConfig, module, paths: list[Path], skipped: int, run_dir: Path, ckpt: str
) -> dict[str, Any]:
    """Run a detection checkpoint over ``paths`` and write the results (see the module docstring)."""
    ids = image_ids(paths, cfg.predict.input, cfg.predict.get("coco_json"))
    detections = _run(cfg, module, paths)
    results = coco_results(detections, ids, module.category_ids)
    (run_dir / "detections.json").write_text(json.dumps(results) + "\n")
    images = []
    for p, iid in zip(paths, ids):
        width, height = upright_size(p)
        images.append({"id": iid, "file_name": str(p), "width": width, "height": height})
    categories = [{"id": c, "name": n} for c, n in zip(module.category_ids, module.class_names)]
    (run_dir / "images.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": categories}) + "\n"
    )
    drawn_dir = None
    if cfg.predict.get("draw"):
        drawn_dir = run_dir / "predict_drawn"
        drawn_dir.mkdir()
        root = Path(cfg.predict.input).expanduser()
        min_score = float(cfg.predict.get("draw_score_thresh", 0.3))
        for p, det in zip(paths, detections):
            name = (
                p.relative_to(root).with_suffix("").as_posix().replace("/", "__") if root.is_dir() else p.stem
            )
            draw(p, det, module.class_names, drawn_dir / f"{name}.png", min_score)
    summary = {
        "mode": "predict",
        "task": "detection",
        "checkpoint": ckpt,
        "images": len(paths),
        "skipped_images": skipped,
        "detections": len(results),
        "predictions": str(run_dir / "detections.json"),
        "drawn": str(drawn_dir) if drawn_dir else None,
    }
    write_summary(run_dir, summary)
    log.info("Wrote %d detections for %d images to %s", len(results), len(paths), run_dir / "detections.json")
    return summary
