"""The audit's Markdown report (``audit.md``) with thumbnails of the flagged images (``audit/``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from b4transfer.data.images import load_rgb

__all__ = ["strip", "table"]

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
