"""Sliced inference and TTA measured on a trained detector: objects small relative to the frame.

Trains (or takes) a detector on the generated detection demo (shapes, images of 160-224 px, letterbox
128), then

* validates it without and with ``tta=hflip`` and ``tta=hflip_scales`` (the demo validation images, mAP);
* pastes the validation images into ``grid`` x ``grid`` mosaics (each object keeps its pixel size, the
  frame grows ``grid`` times), and predicts the mosaics whole (letterboxed to 128: objects shrink by
  ``grid``) and with ``predict.slice`` (tiles of about one source image), scored with pycocotools'
  COCOeval against the mosaics' boxes.

    OMP_NUM_THREADS=1 python scripts/slicing_study.py --json scripts/slicing_study.results.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from b4transfer.cli.entry import config_dir
from b4transfer.modes import run

BASE = ["task=detection", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=none",
        "data.num_workers=0", "predict.precision=32", "predict.check_agreement=0"]


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=[*BASE, *overrides])


def mosaics(samples, grid: int, out: Path, category_ids: list[int]) -> Path:
    """``grid`` x ``grid`` mosaics of ``samples`` (cells of the largest image's size) + their COCO GT."""
    cell_w = max(s.size[0] for s in samples)
    cell_h = max(s.size[1] for s in samples)
    (out / "images").mkdir(parents=True)
    images, annotations = [], []
    per = grid * grid
    for m in range(len(samples) // per):
        frame = Image.new("RGB", (grid * cell_w, grid * cell_h), (124, 116, 104))
        for k, s in enumerate(samples[m * per : (m + 1) * per]):
            x0, y0 = (k % grid) * cell_w, (k // grid) * cell_h
            frame.paste(Image.open(s.path).convert("RGB"), (x0, y0))
            for (x1, y1, x2, y2), label in zip(s.boxes.tolist(), s.labels.tolist()):
                box = [x1 + x0, y1 + y0, x2 - x1, y2 - y1]
                annotations.append({"id": len(annotations) + 1, "image_id": m + 1, "bbox": box, "iscrowd": 0,
                                    "area": box[2] * box[3], "category_id": category_ids[label]})
        name = f"{m:03d}.png"
        frame.save(out / "images" / name)
        images.append({"id": m + 1, "file_name": name, "width": frame.width, "height": frame.height})
    gt = out / "instances.json"
    categories = [{"id": c, "name": str(c)} for c in category_ids]
    gt.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return gt


def coco_scores(gt: Path, detections: Path) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(gt))
        results = json.loads(detections.read_text())
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AR100": 0.0, "detections": 0}
        ev = COCOeval(truth, truth.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": round(ev.stats[0], 4), "AP50": round(ev.stats[1], 4), "AR100": round(ev.stats[8], 4),
            "detections": len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="a demo-detection checkpoint (default: train one)")
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--slice", type=int, default=224, help="tile side (about one source image)")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="slicing-"))
    model = [f"model.name={args.model}", "model.pretrained=false"]
    ckpt = args.ckpt or run(cfg(*model, f"trainer.max_epochs={args.epochs}", f"run_dir={work / 'train'}"))[
        "best_checkpoint"]
    validated = {name: run(cfg(*model, "mode=validate", f"ckpt_path={ckpt}", f"tta={name}",
                               f"run_dir={work / name}")) for name in ("hflip", "hflip_scales")}
    splits = instantiate(cfg(*model).data.source)
    gt = mosaics(list(splits.val), args.grid, work / "mosaics", list(splits.category_ids))
    results = {"checkpoint": str(ckpt), "model": args.model, "epochs": None if args.ckpt else args.epochs,
               "grid": args.grid, "slice": args.slice, "overlap": args.overlap}
    for key in ("val/map", "val/map_50"):
        results[f"tta_{key}"] = {"without": validated["hflip"]["tta"]["metrics_without_tta"].get(key),
                                 **{name: v["metrics"].get(key) for name, v in validated.items()}}
    for name, extra in (("whole", []), ("sliced", [f"predict.slice={args.slice}",
                                                   f"predict.slice_overlap={args.overlap}"])):
        out = work / f"predict_{name}"
        run(cfg(*model, "mode=predict", f"ckpt_path={ckpt}", f"predict.input={work / 'mosaics' / 'images'}",
                f"predict.coco_json={gt}", f"run_dir={out}", *extra))
        results[name] = coco_scores(gt, out / "detections.json")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
