"""Error analysis of a trained detector on the validation split: ``ap_per_class.png`` (COCO AP per class,
torchmetrics) and ``errors.png``, the images with the most false positives + misses at the per-class
score thresholds, drawn (ground truth green, true positives blue, false positives red)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.utils import draw_bounding_boxes

from b4transfer.tasks.detection.calibration import match
from b4transfer.tasks.detection.predict import kept

__all__ = ["analyse_detector"]


def _plot_ap(names: list[str], ap: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3))
    ax.bar(range(len(names)), [max(ap.get(n, 0.0), 0.0) for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="AP @[.5:.95]", ylim=(0, 1), title="validation AP per class")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _draw(canvas: torch.Tensor, target: dict, pred: dict, tp: torch.Tensor) -> torch.Tensor:
    image = (canvas.clamp(0, 1) * 255).to(torch.uint8)
    boxes = torch.cat([target["boxes"], pred["boxes"]]).float()
    colours = ["green"] * len(target["boxes"]) + ["blue" if t else "red" for t in tp.tolist()]
    return draw_bounding_boxes(image, boxes, colors=colours, width=1) if len(boxes) else image


@torch.no_grad()
def analyse_detector(module, loader, run_dir: Path, *, default: float, top: int = 8) -> dict[str, Any]:
    """Write ``ap_per_class.png`` and ``errors.png`` into ``run_dir``; the summary entries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    module.eval().cpu()
    metric, thresholds = module.head.build_metrics(), module.score_thresholds(default)
    worst = []
    for images, targets in loader:
        preds = module.head(list(images))
        metric.update(*module.head.metric_inputs(preds, targets))
        for canvas, pred, target in zip(images, preds, targets):
            keep = kept(pred, thresholds)
            shown = {k: v[keep] for k, v in pred.items()}
            tp = match(shown, target)
            errors = int((~tp).sum()) + len(target["labels"]) - int(tp.sum())
            worst.append((errors, _draw(canvas, target, shown, tp)))
    values = metric.compute()
    names = module.class_names
    ids, aps = values["classes"].reshape(-1).tolist(), values["map_per_class"].reshape(-1).tolist()
    ap = {names[int(i)]: round(float(a), 4) for i, a in zip(ids, aps)}
    _plot_ap(names, ap, run_dir / "ap_per_class.png")
    worst.sort(key=lambda w: -w[0])
    cols = 4
    rows = max(1, -(-min(top, len(worst)) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (errors, image) in zip(axes.flat, worst[:top]):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(f"{errors} false positives + misses", fontsize=8)
    fig.suptitle("validation: ground truth green, true positives blue, false positives red", fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "errors.png", dpi=80)
    plt.close(fig)
    return {
        "ap_per_class": ap,
        "chart": str(run_dir / "ap_per_class.png"),
        "gallery": str(run_dir / "errors.png"),
    }
