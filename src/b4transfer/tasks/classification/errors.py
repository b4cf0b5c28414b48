"""Error analysis of a trained classifier on the validation split: ``errors.png``, a gallery of the
highest-loss images (true vs predicted label, the predicted probability; with ``explain`` settings each
drawn as the model saw it with the class activation map of its predicted class, see
:mod:`~b4transfer.tasks.classification.explain`), and per-class precision / recall (``per_class.csv`` and
the summary), from the calibrated probabilities."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from b4transfer.data.images import load_rgb
from b4transfer.tasks.classification.calibration import validation_logits
from b4transfer.tasks.classification.explain import map_views

__all__ = ["analyse_classifier", "per_class_table"]


def per_class_table(pred: torch.Tensor, target: torch.Tensor, class_names: list[str]) -> dict[str, dict]:
    """``{class: {precision, recall, support}}`` from 0/1 decisions ``pred`` and ``target`` (N, K)."""
    tp = (pred & target).sum(0).float()
    precision = tp / pred.sum(0).clamp(min=1)
    recall = tp / target.sum(0).clamp(min=1)
    return {
        name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "support": int(s)}
        for name, p, r, s in zip(class_names, precision, recall, target.sum(0))
    }


def gallery(rows: list[tuple[Path | np.ndarray, str, str, float, bool]], out: Path, *, cols: int = 4) -> None:
    """Draw ``rows`` (an image file or its pixels, true label, predicted label, probability, right) to
    ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = max(1, -(-len(rows) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(2.4 * cols, 2.6 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, true, pred, prob, right) in zip(axes.flat, rows):
        ax.imshow(path if isinstance(path, np.ndarray) else load_rgb(path))
        ax.set_title(f"true {true}\npred {pred} ({prob:.2f})", fontsize=8, color="green" if right else "red")
    maps = any(isinstance(row[0], np.ndarray) for row in rows)
    fig.suptitle("highest-loss validation images" + (" (map: the predicted class)" if maps else ""))
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def analyse_classifier(
    module, loader, samples, run_dir: Path, *, top: int = 16, device="cpu", explain: dict | None = None
) -> dict[str, Any]:
    """Write ``errors.png`` and ``per_class.csv`` into ``run_dir``; the summary entries. ``explain``:
    ``{"method", "stride"}`` of the maps drawn on the gallery's images (``None``: the images alone)."""
    logits, targets = validation_logits(module, loader, device)
    module.cpu()
    names, k = module.class_names, len(module.class_names)
    probs = module.head.probabilities(logits)
    if module.head.multi_label:
        hot = targets.long().bool()
        losses = F.binary_cross_entropy_with_logits(logits, hot.float(), reduction="none").sum(-1)
        decisions = module.head.decisions(probs)
        shown = [
            (
                " ".join(n for n, h in zip(names, hot[i]) if h) or "-",
                " ".join(n for n, d in zip(names, decisions[i]) if d) or "-",
                float(probs[i].max()),
                bool((decisions[i] == hot[i]).all()),
            )
            for i in range(len(targets))
        ]
    else:
        losses = F.cross_entropy(logits, targets.long(), reduction="none")
        pred = probs.argmax(-1)
        hot, decisions = F.one_hot(targets.long(), k).bool(), F.one_hot(pred, k).bool()
        shown = [
            (
                names[int(targets[i])],
                names[int(pred[i])],
                float(probs[i, pred[i]]),
                bool(pred[i] == targets[i]),
            )
            for i in range(len(targets))
        ]
    order = losses.argsort(descending=True)[:top].tolist()
    out = run_dir / "errors.png"
    images = [samples[i].path for i in order]
    if explain:
        images = map_views(module, images, probs[order].argmax(-1), device=device, **explain)
    gallery([(image, *shown[i]) for image, i in zip(images, order)], out)
    table = per_class_table(decisions, hot, names)
    with (run_dir / "per_class.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "support"])
        writer.writerows([n, v["precision"], v["recall"], v["support"]] for n, v in table.items())
    worst = [
        {
            "path": str(samples[i].path),
            "true": shown[i][0],
            "predicted": shown[i][1],
            "probability": round(shown[i][2], 4),
            "loss": round(float(losses[i]), 4),
        }
        for i in order[:5]
    ]
    drawn = explain if any(isinstance(image, np.ndarray) for image in images) else None
    return {"gallery": str(out), "gallery_maps": drawn, "per_class": table, "highest_loss": worst}
