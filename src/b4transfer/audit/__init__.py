"""Dataset audit: duplicates and leakage, conflicting labels, likely label errors, per-task sections.

A task (``Task.audit``) turns its splits into :class:`AuditItem` records and calls :func:`run_audit`,
which finds

- exact duplicates: files with identical bytes (:func:`~b4transfer.audit.duplicates.file_hash`); a group
  spanning two splits is *leakage*, one whose labels differ is a *conflict* (an error before training
  unless ``data.conflicting_labels=keep``);
- near-duplicates (``full``): pairs whose pooled backbone embeddings have a centred cosine similarity of
  at least ``audit.near_duplicate_threshold`` (resized, re-encoded, lightly edited copies);
- likely label errors (``full``, single-label tasks): out-of-fold probabilities of a k-fold linear probe
  on the same embeddings, ranked by cleanlab's ``find_label_issues``;

and writes ``audit.md`` (thumbnails under ``audit/``) and ``audit.json`` (every finding) into the run
directory; the returned counts go into ``summary.json``. The quick version (``full=False``, before every
training run) hashes files only: cheap next to the image check every run already does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from b4transfer.audit.duplicates import exact_groups, file_hashes, near_pairs
from b4transfer.audit.report import strip, table
from b4transfer.data.splits import shown
from b4transfer.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["AuditItem", "AuditSettings", "Section", "run_audit"]

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
    label_issues: bool = True
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
        if isinstance(settings.folds, bool) or not isinstance(settings.folds, int) or settings.folds < 2:
            raise UserError(f"audit.folds must be an integer >= 2, got {settings.folds!r}.")
        return settings


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
    from b4transfer.audit.label_issues import find_label_issues, out_of_fold_probabilities

    start = time.perf_counter()
    paths = [item.path for item in items]
    groups = _groups(items, file_hashes(paths), class_names)
    if not full:
        _refuse(groups, settings)
    found: dict[str, Any] = {"exact_duplicates": groups}
    if full and embed is not None and len(items) > 1:
        features = embed(paths)
        same = {(a, b) for g in groups for a in g["indices"] for b in g["indices"] if a < b}
        pairs = near_pairs(features, threshold=settings.near_duplicate_threshold, exclude=same)
        found["near_duplicates"] = [
            {
                "a": items[i].name,
                "b": items[j].name,
                "indices": [i, j],
                "cosine": round(c, 4),
                "cross_split": items[i].split != items[j].split,
            }
            for i, j, c in pairs
        ]
        if probe and settings.label_issues:
            labels = np.asarray([int(item.label) for item in items])
            probs = out_of_fold_probabilities(
                features, labels, num_classes=len(class_names), folds=settings.folds
            )
            issues = find_label_issues(labels, probs) if probs is not None else []
            found["label_issues"] = [
                {
                    "where": items[i].name,
                    "index": i,
                    "split": items[i].split,
                    "given": class_names[labels[i]],
                    "suggested": class_names[int(probs[i].argmax())],
                    "p_given": round(float(probs[i, labels[i]]), 4),
                }
                for i in issues
            ]
            if probs is None:
                found["label_issues_skipped"] = "a class has fewer than 2 images"
    counts = {**_counts(found, len(items), sections), "seconds": round(time.perf_counter() - start, 2)}
    _log(counts, found)
    _write(run_dir, items, found, counts, sections, settings)
    return {**counts, "report": str(run_dir / "audit.md")}


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


def _write(run_dir: Path, items, found, counts, sections: Sequence[Section], settings: AuditSettings) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    thumbs = run_dir / "audit"
    budget = [settings.thumbnails]

    def picture(indices: Sequence[int], name: str) -> str:
        if budget[0] <= 0:
            return ""
        budget[0] -= 1
        written = strip([items[i].path for i in indices], thumbs / f"{name}.png")
        return f"![{name}](audit/{written})" if written else ""

    md = [
        "# Dataset audit",
        "",
        table(["finding", "count"], [(k, v) for k, v in counts.items() if not isinstance(v, (dict, list))]),
        "",
    ]
    groups = found["exact_duplicates"]
    md += ["## Exact duplicates (identical files)", ""]
    md += [
        table(
            ["#", "files (split, label)", "leakage", "conflict", "images"],
            [
                (
                    n,
                    "<br>".join(f"{m['where']} ({m['split']}, {m['label']})" for m in g["members"]),
                    "yes" if g["cross_split"] else "",
                    "yes" if g["conflicting_labels"] else "",
                    picture(g["indices"], f"exact{n}"),
                )
                for n, g in enumerate(groups)
            ],
        )
        if groups
        else "None.",
        "",
    ]
    if "near_duplicates" in found:
        near = found["near_duplicates"]
        md += [f"## Near-duplicates (cosine >= {settings.near_duplicate_threshold})", ""]
        md += [
            table(
                ["#", "a", "b", "cosine", "leakage", "images"],
                [
                    (
                        n,
                        p["a"],
                        p["b"],
                        p["cosine"],
                        "yes" if p["cross_split"] else "",
                        picture(p["indices"], f"near{n}"),
                    )
                    for n, p in enumerate(near)
                ],
            )
            if near
            else "None.",
            "",
        ]
    if "label_issues" in found:
        issues = found["label_issues"]
        md += ["## Likely label errors (cleanlab, out-of-fold linear probe)", ""]
        md += [
            table(
                ["rank", "image", "split", "given", "suggested", "p(given)", "image"],
                [
                    (
                        n,
                        p["where"],
                        p["split"],
                        p["given"],
                        p["suggested"],
                        p["p_given"],
                        picture([p["index"]], f"label{n}"),
                    )
                    for n, p in enumerate(issues)
                ],
            )
            if issues
            else "None.",
            "",
        ]
    for section in sections:
        md += [f"## {section.title}", "", section.markdown, ""]
    (run_dir / "audit.md").write_text("\n".join(md))
    details = {"counts": counts, **found, "sections": {s.title: s.summary for s in sections}}
    (run_dir / "audit.json").write_text(json.dumps(details, indent=2, default=str) + "\n")
