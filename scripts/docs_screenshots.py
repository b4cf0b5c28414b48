"""Build the documentation site and screenshot two of its pages in a real headless browser.

    python scripts/docs_screenshots.py                       # build/docs_screenshots/{index,detection}.png
    python scripts/docs_screenshots.py --out DIR --chromium /usr/bin/chromium

The site is built with ``mkdocs build --strict`` into a temporary directory and opened from ``file://``
(``use_directory_urls: false`` in mkdocs.yml), so no web server and no network are needed; the browser
runs with every background network feature off. The PNGs go to ``--out`` (``build/`` is ignored by git).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"index": "index.html", "detection": "tasks/detection.html"}
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1280,1600",
)


def build_site(site: Path) -> float:
    """``mkdocs build --strict`` into ``site``; returns the seconds it took."""
    import time

    start = time.perf_counter()
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", site]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - start


def screenshot(chromium: str, page: Path, png: Path, profile: Path) -> None:
    """One page of the built site as a PNG, 1280 x 1600."""
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", page.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode or not png.is_file() or png.stat().st_size == 0:
        raise SystemExit(f"{chromium} made no screenshot of {page}:\n{result.stdout}{result.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "docs_screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        raise SystemExit(f"no chromium at {args.chromium}: install Debian's chromium or pass --chromium PATH")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="b4docs-") as tmp:
        site, profile = Path(tmp) / "site", Path(tmp) / "profile"
        seconds = build_site(site)
        print(f"built the site in {seconds:.1f} s")
        for name, rel in PAGES.items():
            png = args.out / f"{name}.png"
            screenshot(args.chromium, site / rel, png, profile)
            print(f"{png} ({png.stat().st_size // 1024} KB) <- {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
