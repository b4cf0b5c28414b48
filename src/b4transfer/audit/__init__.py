"""Dataset audit: duplicates and leakage, conflicting labels, likely label errors, per-task sections.

A task (``Task.audit``) turns its splits into :class:`AuditItem` records and calls :func:`run_audit`
(:func:`audit_splits` does both),
which finds

- exact duplicates: files with identical bytes (:func:`~b4transfer.audit.duplicates.file_hash`); a group
  spanning two splits is *leakage*, one whose labels differ is a *conflict* (an error before training
  unless ``data.conflicting_labels=keep``);
- near-duplicates (``full``): pairs whose 256-bit perceptual hashes (pHash) differ in at most
  ``audit.hash_distance`` bits (resized and re-encoded copies), or whose pooled backbone embeddings,
  standardised per feature, have a cosine similarity of at least ``audit.near_duplicate_threshold``;
- likely label errors (``full``, single-label tasks): out-of-fold probabilities of a k-fold linear probe
  on the same embeddings, flagged and ranked by cleanlab's ``find_label_issues`` (by self-confidence,
  the probability of the given label); ``audit.md`` lists those at or below ``audit.label_issue_cutoff``;

and writes ``audit.md`` (thumbnails under ``audit/``) and ``audit.json`` (every finding) into the run
directory; the returned counts go into ``summary.json``. The quick version (``full=False``, before every
training run) hashes files only: cheap next to the image check every run already does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from b4transfer.audit.duplicates import exact_groups, file_hashes, near_duplicates
from b4transfer.audit.phash import image_hashes
from b4transfer.audit.report import write_report
from b4transfer.data.splits import SPLIT_NAMES, shown
from b4transfer.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["AuditItem", "AuditSettings", "Section", "audit_splits", "run_audit"]

HASH_SIZE = 16  # pHash of 16 x 16 DCT frequencies: 256 bits
HASH_BITS = HASH_SIZE * HASH_SIZE
CHOICES = {"leakage": ("warn", "error"), "conflicting_labels": ("error", "keep")}


@dataclass(frozen=True)
class AuditItem:
    """One listed image. ``label``: hashable (a class index, a tuple of them); ``None``: not compared.
    ``where``: where the source lists it (``labels.csv line 5``); empty: the path says it."""

    split: str
    path: Path
    label: Any = None
    where: str = ""

    @property
    def name(self) -> str:
        return self.where or str(self.path)


@dataclass
class Section:
    """A task's own part of the report: a Markdown body and its entries in the summary."""

    title: str
    markdown: str
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditSettings:
    """``cfg.audit`` checked (and ``data.conflicting_labels``)."""

    on_train: bool = True
    near_duplicate_threshold: float = 0.97
    hash_distance: int | None = 40
    label_issues: bool = True
    label_issue_cutoff: float = 0.01
    folds: int = 5
    thumbnails: int = 12
    leakage: str = "warn"
    conflicting_labels: str = "error"

    @classmethod
    def from_config(cls, audit: Mapping[str, Any] | None, *, conflicting_labels: str | None = None):
        known = {f for f in cls.__dataclass_fields__}
        values = dict(audit or {})
        if conflicting_labels is not None:
            values["conflicting_labels"] = conflicting_labels
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"audit.{unknown[0]} is not an audit setting; the settings are {sorted(known)}.")
        settings = cls(**values)
        for key, options in CHOICES.items():
            value = getattr(settings, key)
            if value not in options:
                where = "data" if key == "conflicting_labels" else "audit"
                raise UserError(
                    f"{where}.{key}={value!r} is not an option; choose one of {', '.join(options)}."
                )
        threshold = settings.near_duplicate_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise UserError(
                f"audit.near_duplicate_threshold must be a cosine similarity in (0, 1], got {threshold!r}; "
                "e.g. audit.near_duplicate_threshold=0.95."
            )
        _check_hash_distance(settings.hash_distance)
        cutoff = settings.label_issue_cutoff
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 < cutoff <= 1:
            raise UserError(
                f"audit.label_issue_cutoff must be a probability in (0, 1], got {cutoff!r}; "
                "e.g. audit.label_issue_cutoff=0.05."
            )
        if isinstance(settings.folds, bool) or not isinstance(settings.folds, int) or settings.folds < 2:
            raise UserError(f"audit.folds must be an integer >= 2, got {settings.folds!r}.")
        return settings


def _check_hash_distance(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < HASH_BITS:
        raise UserError(
            f"audit.hash_distance must be a number of bits in 0..{HASH_BITS - 1} (of the {HASH_BITS}-bit "
            f"perceptual hash) or null (off), got {value!r}; e.g. audit.hash_distance=40."
        )


def _label_text(label: Any, class_names: Sequence[str]) -> str:
    if label is None:
        return "-"
    ids = label if isinstance(label, (tuple, list, frozenset)) else (label,)
    return "+".join(class_names[i] for i in ids) or "(none)"


def _groups(items: Sequence[AuditItem], hashes: Sequence[str], class_names) -> list[dict[str, Any]]:
    out = []
    for group in exact_groups(hashes):
        labels = {items[i].label for i in group if items[i].label is not None}
        out.append(
            {
                "members": [
                    {
                        "split": items[i].split,
                        "where": items[i].name,
                        "label": _label_text(items[i].label, class_names),
                    }
                    for i in group
                ],
                "indices": group,
                "cross_split": len({items[i].split for i in group}) > 1,
                "conflicting_labels": len(labels) > 1,
            }
        )
    return sorted(out, key=lambda g: (not g["conflicting_labels"], not g["cross_split"]))


def _refuse(groups: list[dict], settings: AuditSettings) -> None:
    """Before training: conflicting labels (unless kept) and, with audit.leakage=error, leakage."""

    def listing(gs):
        return shown(
            [" = ".join(f"{m['where']} ({m['split']}, {m['label']})" for m in g["members"]) for g in gs]
        )

    conflicts = [g for g in groups if g["conflicting_labels"]]
    if conflicts and settings.conflicting_labels == "error":
        raise UserError(
            f"{len(conflicts)} image(s) are listed more than once with different labels: "
            f"{listing(conflicts)}. "
            "Fix: keep one label per image (delete or correct the rows / files), or set "
            "data.conflicting_labels=keep to train on them as they are."
        )
    leaks = [g for g in groups if g["cross_split"]]
    if leaks and settings.leakage == "error":
        raise UserError(
            f"{len(leaks)} image(s) are in more than one split (leakage): {listing(leaks)}. Fix: keep each "
            "image in one split, or set audit.leakage=warn."
        )


def run_audit(
    items: Sequence[AuditItem],
    *,
    class_names: Sequence[str],
    run_dir: Path,
    settings: AuditSettings,
    full: bool,
    embed: Callable[[list[Path]], np.ndarray] | None = None,
    probe: bool = False,
    sections: Sequence[Section] = (),
) -> dict[str, Any]:
    """Audit ``items``; write ``audit.md``, ``audit.json`` and thumbnails into ``run_dir``.

    Args:
        items: Every listed image of every split.
        class_names: Names of the label indices.
        run_dir: Where the report goes.
        settings: The checked settings.
        full: ``mode=audit``: also near-duplicates and label errors, and findings never refuse;
            ``False``: the quick check before training (conflicts / leakage may refuse, see ``settings``).
        embed: Paths -> ``(N, C)`` pooled embeddings (``full`` only).
        probe: Labels are single class indices: search label errors (``full`` only).
        sections: The task's own report sections.

    Returns:
        The counts for ``summary.json`` (``audit``).
    """
    start = time.perf_counter()
    paths = [item.path for item in items]
    groups = _groups(items, file_hashes(paths), class_names)
    if not full:
        _refuse(groups, settings)
    found: dict[str, Any] = {"exact_duplicates": groups}
    if full and len(items) > 1:
        features = embed(paths) if embed is not None else None
        same = {(a, b) for g in groups for a in g["indices"] for b in g["indices"] if a < b}
        found["near_duplicates"] = _near(items, features, same, settings)
        if probe:
            found.update(_label_issues(items, features, class_names, settings))
    counts = {**_counts(found, len(items), sections), "seconds": round(time.perf_counter() - start, 2)}
    _log(counts, found)
    write_report(run_dir, paths, found, counts, sections, settings)
    return {**counts, "report": str(run_dir / "audit.md")}


def audit_splits(
    splits: Any, run_dir: Path, *, item: Callable[[str, Any], AuditItem] | None = None, **options: Any
) -> dict[str, Any]:
    """:func:`run_audit` of every sample of ``splits`` (train, val and test), with its class names.

    Args:
        splits: A task's splits (``class_names``, ``train``, ``val``, ``test``).
        run_dir: Where the report goes.
        item: ``item(split, sample)`` -> the sample's :class:`AuditItem`; ``None``: its path alone.
        **options: :func:`run_audit`'s ``settings``, ``full``, ``embed``, ``probe``, ``sections``.
    """
    item = item or (lambda split, sample: AuditItem(split, sample.path))
    items = [item(split, sample) for split in SPLIT_NAMES for sample in getattr(splits, split)]
    return run_audit(items, class_names=splits.class_names, run_dir=run_dir, **options)


def _near(items: Sequence[AuditItem], features, same: set, settings: AuditSettings) -> list[dict[str, Any]]:
    """Near-duplicate pairs (not exact copies) by perceptual hash and/or embedding."""
    hashes = None
    if settings.hash_distance is not None:
        hashes = image_hashes([item.path for item in items], kind="phash", size=HASH_SIZE)
    pairs = near_duplicates(
        hashes=hashes,
        max_distance=settings.hash_distance,
        embeddings=features,
        threshold=settings.near_duplicate_threshold,
        exclude=same,
    )
    return [
        {
            "a": items[p["i"]].name,
            "b": items[p["j"]].name,
            "indices": [p["i"], p["j"]],
            "method": p["method"],
            "hash_distance": p["hash_distance"],
            "cosine": p["cosine"],
            "cross_split": items[p["i"]].split != items[p["j"]].split,
        }
        for p in pairs
    ]


def _label_issues(items: Sequence[AuditItem], features, class_names, settings: AuditSettings) -> dict:
    """``label_issues`` (cleanlab's flagged images, ranked) or ``label_issues_skipped`` (the reason)."""
    from b4transfer.audit.label_issues import find_label_issues, out_of_fold_probabilities

    if not settings.label_issues:
        return {"label_issues_skipped": "audit.label_issues=false"}
    if features is None:
        return {"label_issues_skipped": "no embeddings (the probe needs the backbone's features)"}
    labels = np.asarray([int(item.label) for item in items])
    probs = out_of_fold_probabilities(features, labels, num_classes=len(class_names), folds=settings.folds)
    if probs is None:
        return {
            "label_issues_skipped": "a class has fewer than 2 images (the out-of-fold probe holds one out "
            "per fold)"
        }
    issues = []
    for i in find_label_issues(labels, probs):
        p_given = float(probs[i, labels[i]])
        issues.append(
            {
                "where": items[i].name,
                "index": i,
                "split": items[i].split,
                "given": class_names[labels[i]],
                "suggested": class_names[int(probs[i].argmax())],
                "p_given": round(p_given, 4),
                "within_cutoff": p_given <= settings.label_issue_cutoff,
            }
        )
    return {"label_issues": issues, "label_issue_cutoff": f"p(given) <= {settings.label_issue_cutoff}"}


def _counts(found: dict[str, Any], n: int, sections: Sequence[Section]) -> dict[str, Any]:
    groups = found["exact_duplicates"]
    counts: dict[str, Any] = {
        "images": n,
        "exact_duplicate_groups": len(groups),
        "exact_duplicate_images": sum(len(g["members"]) for g in groups),
        "cross_split_duplicates": sum(g["cross_split"] for g in groups),
        "conflicting_labels": sum(g["conflicting_labels"] for g in groups),
    }
    if "near_duplicates" in found:
        near = found["near_duplicates"]
        counts.update(
            near_duplicate_pairs=len(near), cross_split_near_duplicates=sum(p["cross_split"] for p in near)
        )
    if "label_issues" in found:
        counts["label_issues"] = len(found["label_issues"])
        counts["label_issue_cutoff"] = found["label_issue_cutoff"]
        counts["label_issues_within_cutoff"] = sum(p["within_cutoff"] for p in found["label_issues"])
    if "label_issues_skipped" in found:
        counts["label_issues"] = f"skipped: {found['label_issues_skipped']}"
    for section in sections:
        counts.update(section.summary)
    return counts


def _log(counts: dict[str, Any], found: dict[str, Any]) -> None:
    leaks = [g for g in found["exact_duplicates"] if g["cross_split"]]
    if leaks:
        log.warning(
            "Audit: %d image(s) are in more than one split (leakage), e.g. %s. HINT: keep each image in "
            "one split (audit.md lists them all).",
            len(leaks),
            " = ".join(f"{m['where']} ({m['split']})" for m in leaks[0]["members"]),
        )
    log.info("Audit: %s", {k: v for k, v in counts.items() if not isinstance(v, (dict, list))})
