"""``mode=audit`` (and the quick audit before training) for classification: duplicates and leakage,
conflicting labels, near-duplicates, likely label errors (single-label) and the class balance with the
class weights ``loss.class_weights=auto`` would use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from b4transfer.audit import AuditItem, AuditSettings, Section, audit_splits
from b4transfer.audit.embeddings import DATA_KEYS, run_embedder
from b4transfer.audit.report import table
from b4transfer.config import plain
from b4transfer.data.splits import DatasetSplits, Sample, class_counts
from b4transfer.tasks.classification.losses import class_weights

SPLITS = ("train", "val", "test")


def class_section(splits: DatasetSplits) -> Section:
    """Images per class and split, the imbalance ratio and the suggested (auto) class weights."""
    names = splits.class_names
    counts = {s: class_counts(getattr(splits, s), len(names)) for s in SPLITS}
    weights = class_weights("auto", counts["train"], names)
    present = [c for c in counts["train"] if c]
    ratio = round(max(present) / min(present), 2) if present else None
    rows = [(n, *(counts[s][i] for s in SPLITS), weights[i]) for i, n in enumerate(names)]
    body = table(["class", *SPLITS, "suggested weight (auto)"], rows)
    hint = ""
    if ratio and ratio >= 3:
        hint = " Consider loss.class_weights=auto (docs/guides/class-imbalance.md)."
    body += f"\n\nImbalance (largest / smallest train class): {ratio}.{hint}"
    summary = {
        "class_counts": dict(zip(names, counts["train"])),
        "imbalance_ratio": ratio,
        "suggested_class_weights": dict(zip(names, weights)),
    }
    return Section("Classes", body, summary)


def audit_classification(
    cfg: DictConfig, splits: DatasetSplits, run_dir: Path, *, full: bool
) -> dict[str, Any]:
    """Audit the splits (``full``: with near-duplicates and label errors) into ``run_dir``."""
    settings = AuditSettings.from_config(
        plain(cfg.get("audit")), conflicting_labels=cfg.data.get("conflicting_labels", "error")
    )


    def item(split: str, s: Sample) -> AuditItem:
        label = tuple(s.target) if splits.multi_label else int(s.target)
        return AuditItem(split, s.path, label, s.origin or "")

    embed = run_embedder(cfg, {k: plain(cfg.data.get(k)) for k in DATA_KEYS})
    return audit_splits(
        splits,
        run_dir,
        item=item,
        settings=settings,
        full=full,
        embed=embed if full else None,
        probe=not splits.multi_label,
        sections=[class_section(splits)],
    )
