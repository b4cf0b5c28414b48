"""The audit's Markdown report (``audit.md``) with thumbnails of the flagged images (``audit/``), and
``audit.json`` (every finding)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from b4transfer.data.images import load_rgb

__all__ = ["strip", "table", "write_report"]

THUMB = 96


def strip(paths: Sequence[Path], out: Path, *, size: int = THUMB) -> str | None:
    """Write the images side by side (``size`` px tiles) to ``out``; its name, or ``None`` if unreadable."""
    tiles = []
    for path in paths[:4]:
        try:
            image = load_rgb(path)
        except Exception:
            continue
        image.thumbnail((size, size))
        tiles.append(image)
    if not tiles:
        return None
    canvas = Image.new("RGB", (len(tiles) * (size + 4), size), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * (size + 4), 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out.name


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (``|`` in cells escaped)."""

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


Picture = Callable[[Sequence[int], str], str]


def _exact(groups: list[dict], picture: Picture) -> list[str]:
    rows = [
        (
            n,
            "<br>".join(f"{m['where']} ({m['split']}, {m['label']})" for m in g["members"]),
            "yes" if g["cross_split"] else "",
            "yes" if g["conflicting_labels"] else "",
            picture(g["indices"], f"exact{n}"),
        )
        for n, g in enumerate(groups)
    ]
    header = ["#", "files (split, label)", "leakage", "conflict", "images"]
    return ["## Exact duplicates (identical files)", "", table(header, rows) if rows else "None.", ""]


def _near(near: list[dict], settings: Any, picture: Picture) -> list[str]:
    rule = f"embedding cosine >= {settings.near_duplicate_threshold}"
    if settings.hash_distance is not None:
        rule = f"perceptual hash within {settings.hash_distance} of 256 bits, or {rule}"
    rows = [
        (
            n,
            p["a"],
            p["b"],
            p["method"],
            "" if p["hash_distance"] is None else p["hash_distance"],
            "" if p["cosine"] is None else p["cosine"],
            "yes" if p["cross_split"] else "",
            picture(p["indices"], f"near{n}"),
        )
        for n, p in enumerate(near)
    ]
    header = ["#", "a", "b", "found by", "hash distance", "cosine", "leakage", "images"]
    return [f"## Near-duplicates ({rule})", "", table(header, rows) if rows else "None.", ""]


def _label_issues(found: dict[str, Any], settings: Any, picture: Picture) -> list[str]:
    title = "## Likely label errors (cleanlab, out-of-fold linear probe)"
    if "label_issues_skipped" in found:
        return [title, "", f"Skipped: {found['label_issues_skipped']}.", ""]
    issues = found["label_issues"]
    shown = [p for p in issues if p["within_cutoff"]]
    cutoff = settings.label_issue_cutoff
    note = (
        f"{len(issues)} flagged by cleanlab, ranked by p(given) (the probe's out-of-fold probability of "
        f"the given label; cleanlab's self-confidence). Listed: the {len(shown)} with p(given) <= {cutoff} "
        f"(audit.label_issue_cutoff); all {len(issues)} are in audit.json."
    )
    rows = [
        (
            n + 1,
            p["where"],
            p["split"],
            p["given"],
            p["suggested"],
            p["p_given"],
            picture([p["index"]], f"label{n}"),
        )
        for n, p in enumerate(shown)
    ]
    header = ["rank", "image", "split", "given", "suggested", "p(given)", "image"]
    return [title, "", note if issues else "None.", "", table(header, rows) if rows else "", ""]


def write_report(
    run_dir: Path, paths: Sequence[Path], found: dict[str, Any], counts: dict[str, Any], sections, settings
) -> None:
    """``audit.md`` (thumbnails of the first ``settings.thumbnails`` findings under ``audit/``) and
    ``audit.json`` into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    budget = [settings.thumbnails]

    def picture(indices: Sequence[int], name: str) -> str:
        if budget[0] <= 0:
            return ""
        budget[0] -= 1
        written = strip([paths[i] for i in indices], run_dir / "audit" / f"{name}.png")
        return f"![{name}](audit/{written})" if written else ""

    plain = [(k, v) for k, v in counts.items() if not isinstance(v, (dict, list))]
    md = ["# Dataset audit", "", table(["finding", "count"], plain), ""]
    md += _exact(found["exact_duplicates"], picture)
    if "near_duplicates" in found:
        md += _near(found["near_duplicates"], settings, picture)
    if "label_issues" in found or "label_issues_skipped" in found:
        md += _label_issues(found, settings, picture)
    for section in sections:
        md += [f"## {section.title}", "", section.markdown, ""]
    (run_dir / "audit.md").write_text("\n".join(md))
    details = {"counts": counts, **found, "sections": {s.title: s.summary for s in sections}}
    (run_dir / "audit.json").write_text(json.dumps(details, indent=2, default=str) + "\n")
