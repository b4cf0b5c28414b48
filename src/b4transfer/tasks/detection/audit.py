"""``mode=audit`` (and the quick audit before training) for detection: duplicates and leakage,
near-duplicates, boxes per class, and box-size / aspect-ratio histograms against the anchors and the
image size (``audit/boxes.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from b4transfer.audit import AuditSettings, Section, audit_splits
from b4transfer.audit.embeddings import run_embedder
from b4transfer.audit.report import table
from b4transfer.config import plain
from b4transfer.tasks.detection.anchors import anchor_fit, box_sides
from b4transfer.tasks.detection.data.splits import DetectionSplits

SPLITS = ("train", "val", "test")


def class_section(splits: DetectionSplits) -> Section:
    """Boxes and images per class and split (class names are distinct: the readers refuse repeats)."""
    names = splits.class_names
    boxes = {
        s: np.bincount(
            np.concatenate(
                [np.asarray(x.labels, np.int64).reshape(-1) for x in getattr(splits, s)]
                or [np.zeros(0, np.int64)]
            ),
            minlength=len(names),
        )
        for s in SPLITS
    }
    empty = {s: sum(len(np.asarray(x.labels).reshape(-1)) == 0 for x in getattr(splits, s)) for s in SPLITS}
    rows = [(n, *(int(boxes[s][i]) for s in SPLITS)) for i, n in enumerate(names)]
    body = table(["class", *(f"{s} boxes" for s in SPLITS)], rows)
    body += f"\n\nImages without boxes (negatives): {empty}."
    return Section(
        "Classes",
        body,
        {"box_counts": {n: int(boxes["train"][i]) for i, n in enumerate(names)}, "negative_images": empty},
    )


def box_section(
    splits: DetectionSplits, run_dir: Path, *, image_size: int, anchor_sizes, detector: str
) -> Section:
    """Histograms of box sides (on the letterbox canvas) and aspect ratios, with the anchors' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = box_sides(splits.train, image_size)
    aspects = np.asarray(
        [
            w / h
            for s in splits.train
            for (x1, y1, x2, y2) in np.asarray(s.boxes).reshape(-1, 4)
            if (w := x2 - x1) > 0 and (h := y2 - y1) > 0
        ]
    )
    fit = anchor_fit(sides, anchor_sizes, detector)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.hist(sides, bins=30, color="tab:blue")
    for size in sorted({v for level in anchor_sizes for v in level}):
        a.axvline(size, color="tab:orange", lw=0.8)
    a.axvline(image_size, color="k", ls="--", lw=1)
    a.set(title=f"train box side sqrt(wh) on the {image_size}px canvas; anchors (orange)", xlabel="pixels")
    b.hist(np.log2(aspects) if len(aspects) else [], bins=30, color="tab:green")
    b.set(title="aspect ratio w/h (log2)", xlabel="log2(w/h)")
    out = run_dir / "audit" / "boxes.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    body = f"![boxes](audit/{out.name})\n\nAnchor fit ({detector}): {fit}"
    return Section("Boxes", body, {"anchor_fit": fit})


def audit_detection(
    cfg: DictConfig, splits: DetectionSplits, run_dir: Path, *, full: bool, module=None
) -> dict[str, Any]:
    """Audit the splits into ``run_dir``; ``full`` (with the built ``module``: its anchors and image
    size): near-duplicates and the box histograms too."""
    settings = AuditSettings.from_config(plain(cfg.get("audit")))
    sections = [class_section(splits)]
    embed = None
    if full and module is not None:
        sections.append(
            box_section(
                splits,
                run_dir,
                image_size=module.image_size,
                anchor_sizes=module.head.anchor_sizes,
                detector=module.head.detector_name,
            )
        )
        embed = run_embedder(cfg, {"image_size": module.image_size})
    return audit_splits(splits, run_dir, settings=settings, full=full, embed=embed, sections=sections)
