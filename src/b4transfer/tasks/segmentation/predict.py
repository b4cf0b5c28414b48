"""``mode=predict`` with a segmentation checkpoint: one palette mask PNG per image, at its original size.

Writes into the run directory:

* ``predict_masks/<image's relative path>.png`` — a palette (``P``) PNG: each pixel's value is its class
  index (as the training masks), shown in the class colours (more than 256 classes: a 16-bit grayscale
  PNG of the indices); the same width and height as the input image. Inputs that differ only by their
  extension keep it (``x.jpg.png``, ``x.png.png``: :func:`b4transfer.runtime.inference.output_names`);
* ``predictions.csv`` — image, mask file (overlay file) and each class's share of the pixels;
* with ``predict.draw=true``, ``predict_overlays/<...>.png``: the image with the mask blended over it.

Logits are computed on the letterboxed (or stretched) canvas, the content is cut out and resized (bilinear)
to the image's size, and the argmax taken there. The ``predict.*`` speed switches are classification's
(:mod:`b4transfer.runtime.inference`); with bf16 or compilation the first ``predict.check_agreement`` images
are
run again in fp32 eager and ``summary.json`` reports the share of pixels whose class agrees.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader

from b4transfer.config import num_workers, plain
from b4transfer.data.images import load_rgb
from b4transfer.data.loaders import fill_colour
from b4transfer.runtime.inference import MIN_AGREEMENT, InferenceSettings, output_names, predict_outputs
from b4transfer.tasks.segmentation.data.datamodule import MaskPathDataset

log = logging.getLogger(__name__)


def mask_png(mask: np.ndarray, palette) -> Image.Image:
    """A palette PNG of class indices coloured by ``palette``; with more than 256 classes a 16-bit
    grayscale PNG of the indices (a palette holds 256 colours)."""
    if len(palette) > 256:
        return Image.fromarray(mask.astype(np.uint16))
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [v for colour in palette for v in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def predict_masks(cfg: DictConfig, module, paths: list[Path]) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The predicted ``(H, W)`` uint8 mask of every image (original size), and the inference report."""
    settings = InferenceSettings.from_config(plain(cfg.predict))
    fill = fill_colour(module.data_config["eval"]["mean"])
    dataset = MaskPathDataset(paths, module.image_size, fill, module.resize)
    batch = int(cfg.predict.get("batch_size") or cfg.data.batch_size)
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=num_workers(cfg))
    outputs, report, check_on = predict_outputs(
        module, loader, settings=settings, trainer_kwargs=plain(cfg.trainer)
    )
    masks = _in_order(outputs, len(paths))
    if check_on is not None:
        n = settings.check_agreement
        report["agreement_vs_fp32"] = pixel_agreement(module, dataset, masks, n, check_on)
    return masks, report


def _in_order(outputs: list[list[dict]], n: int) -> list[torch.Tensor]:
    by_index = {o["index"]: o["mask"] for batch_out in outputs for o in batch_out}
    return [by_index[i] for i in range(n)]


@torch.no_grad()
def pixel_agreement(module, dataset: MaskPathDataset, masks, n: int, device) -> dict[str, Any]:
    """Re-run the first ``n`` images in fp32 eager: the share of pixels whose class agrees."""
    module.to(device).eval()
    same = total = 0
    for i in range(min(n, len(dataset))):
        canvas, meta = dataset[i]
        batch = (canvas[None].to(device), {k: torch.as_tensor(v)[None] for k, v in meta.items()})
        ref = module.predict_step(batch)[0]["mask"]
        same += int((ref == masks[i]).sum())
        total += ref.numel()
    share = same / max(1, total)
    if share < MIN_AGREEMENT:
        log.warning(
            "Fast inference agrees with fp32 on only %.2f%% of the pixels. HINT: predict.precision=32 "
            "gives exact fp32 predictions.",
            100 * share,
        )
    return {"images": min(n, len(dataset)), "pixel_agreement": share}


def write_masks(cfg: DictConfig, module, paths: list[Path], run_dir: Path) -> dict[str, Any]:
    """Write the mask PNGs, ``predictions.csv`` and (``predict.draw``) the overlays; the summary entries."""
    masks, report = predict_masks(cfg, module, paths)
    names = output_names(paths, cfg.predict.get("input"))
    draw = bool(cfg.predict.get("draw"))
    rows = []
    for path, name, mask in zip(paths, names, masks):
        array = mask.numpy()
        out = run_dir / "predict_masks" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        mask_png(array, module.palette).save(out)
        if draw:
            image = np.asarray(load_rgb(path), np.float32)
            colours = np.array(module.palette, np.float32)[array]
            blended = np.where(array[..., None] > 0, 0.5 * image + 0.5 * colours, image)
            drawn = run_dir / "predict_overlays" / name
            drawn.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(blended.astype(np.uint8)).save(drawn)
        shares = np.bincount(array.ravel(), minlength=len(module.class_names)) / array.size
        rows.append([str(path), str(out), *([str(drawn)] if draw else []), *(f"{s:.4f}" for s in shares)])
    table = run_dir / "predictions.csv"
    header = ["path", "mask", *(["overlay"] if draw else []), *(f"share_{c}" for c in module.class_names)]
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    log.info("Wrote %d masks to %s", len(paths), run_dir / "predict_masks")
    summary = {"predictions": str(table), "masks_dir": str(run_dir / "predict_masks"), "inference": report}
    if draw:
        summary["overlays_dir"] = str(run_dir / "predict_overlays")
    return summary
