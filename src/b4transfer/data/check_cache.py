"""Remember which image files the start-up scan found readable, so later runs do not decode them again.

The scan (:func:`b4transfer.data.splits.drop_unreadable`) decodes every image once per run: ~2 ms per
2 MP JPEG on 2 cores, minutes for COCO, most of an hour for ImageNet, and again for every job of a
sweep. Its verdicts are kept in one SQLite file, keyed by the file's absolute path, size and
modification time (ns): a file that is replaced or touched is decoded again. The file is
``$B4TRANSFER_CHECK_CACHE`` if set, else ``image_checks.sqlite3`` in ``$B4TRANSFER_CACHE`` (or
``~/.cache/b4transfer``); ``B4TRANSFER_CHECK_CACHE=off`` turns it off. Any trouble with it (read-only
home, a corrupt file, a lock held too long) only costs the speed-up: the scan then runs uncached.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from b4transfer.data.demo import cache_root

log = logging.getLogger(__name__)

_CHUNK = 500  # paths per SELECT (SQLite's variable limit is 999 on old builds)


def cache_file() -> Path | None:
    """Where the verdicts live; ``None`` when switched off."""
    setting = os.environ.get("B4TRANSFER_CHECK_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        return Path(setting).expanduser()
    return cache_root() / "image_checks.sqlite3"


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing: the check itself says so, every time
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def cached_checks(
    paths: Sequence[Path], check: Callable[[list[Path]], list[str | None]]
) -> tuple[list[str | None], int]:
    """``check``'s verdicts (``None``: readable, else the reason) for ``paths``, known ones from the cache.

    Args:
        paths: Image files.
        check: Checks a list of files (e.g. decoding them in a thread pool).

    Returns:
        ``(verdicts, n_cached)``: one verdict per path, and how many came from the cache.
    """
    location = cache_file()
    keys = [_key(p) for p in paths]
    known: dict[tuple[str, int, int], str | None] = {}
    db = None
    if location is not None:
        try:
            location.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(location, timeout=10)
            db.execute(
                "CREATE TABLE IF NOT EXISTS checks (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                "reason TEXT)"
            )
            wanted = [k for k in keys if k is not None]
            for i in range(0, len(wanted), _CHUNK):
                chunk = wanted[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT path, size, mtime_ns, reason FROM checks WHERE path IN ({marks})",
                    [k[0] for k in chunk],
                )
                known.update({(p, s, m): r for p, s, m, r in rows})
        except (sqlite3.Error, OSError) as err:
            log.info("Image check cache %s not used (%s); checking every image.", location, err)
            if db is not None:
                db.close()
            db, known = None, {}
    todo = [i for i, k in enumerate(keys) if k is None or k not in known]
    fresh = dict(zip(todo, check([paths[i] for i in todo]))) if todo else {}
    verdicts = [fresh[i] if i in fresh else known[keys[i]] for i in range(len(paths))]
    if db is not None:
        try:
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?)",
                    [(*keys[i], fresh[i]) for i in todo if keys[i] is not None],
                )
        except sqlite3.Error as err:
            log.info("Image check cache %s not updated (%s).", location, err)
        finally:
            db.close()
    return verdicts, len(paths) - len(todo)
