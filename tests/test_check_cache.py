"""The start-up image scan remembers its verdicts: unchanged files are not decoded again."""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image

from b4transfer.data import images, splits
from b4transfer.data.splits import Sample, drop_unreadable


def _files(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(path)
        paths.append(path)
    (folder / "bad.png").write_bytes(b"not an image")
    return [*paths, folder / "bad.png"]


def _counting(monkeypatch):
    seen = []

    def check(path):
        seen.append(path.name)
        return images.check_image(path)

    monkeypatch.setattr(splits, "check_image", check)
    return seen


def test_second_scan_decodes_only_changed_files(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("B4TRANSFER_CHECK_CACHE", str(tmp_path / "cache" / "checks.sqlite3"))
    seen = _counting(monkeypatch)
    samples = [Sample(p, 0) for p in _files(tmp_path / "img")]
    good, bad = drop_unreadable(samples)
    assert len(good) == 3 and [p.name for p, _ in bad] == ["bad.png"] and len(seen) == 4
    seen.clear()
    with caplog.at_level(logging.INFO):
        good2, bad2 = drop_unreadable(samples)  # nothing changed: nothing decoded, same verdicts
    assert seen == [] and [s.path for s in good2] == [s.path for s in good] and bad2 == bad
    assert "4 of 4 files unchanged since an earlier run's check" in caplog.text
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "bad.png")  # repaired
    stat = os.stat(tmp_path / "img" / "0.png")
    (tmp_path / "img" / "0.png").write_bytes(b"broken now")  # replaced by garbage
    os.utime(tmp_path / "img" / "0.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    good3, bad3 = drop_unreadable(samples)
    assert sorted(seen) == ["0.png", "bad.png"]
    assert [p.name for p, _ in bad3] == ["0.png"] and len(good3) == 3


def test_scan_works_without_the_cache(tmp_path, monkeypatch):
    seen = _counting(monkeypatch)
    samples = [Sample(p, 0) for p in _files(tmp_path / "img")]
    monkeypatch.setenv("B4TRANSFER_CHECK_CACHE", "off")
    drop_unreadable(samples), drop_unreadable(samples)
    assert len(seen) == 8  # switched off: every run decodes everything
    seen.clear()
    broken = tmp_path / "corrupt.sqlite3"
    broken.write_bytes(b"this is not a database")
    monkeypatch.setenv("B4TRANSFER_CHECK_CACHE", str(broken))
    good, bad = drop_unreadable(samples)  # a broken cache file costs the speed-up, nothing else
    assert len(good) == 3 and len(bad) == 1 and len(seen) == 4
