"""Detection: train step and predict images/s vs the raw torchvision detector over the same backbone.

A stub until detection lands (``b4transfer.heads.detection``): it reports "not available" with the
reason, so the harness and ``BENCHMARKS.md`` stay complete without it.
"""

from __future__ import annotations

import importlib.util

from benchmarks.common import Result


def available() -> bool:
    try:
        return importlib.util.find_spec("b4transfer.heads.detection") is not None
    except ModuleNotFoundError:
        return False


def run(p: dict, *, device: str = "cpu") -> Result:
    title = "Detection: train step and predict vs raw torchvision detector"
    if not available():
        return Result(name="detection", title=title, status="not available",
                      reason="b4transfer.heads.detection does not exist in this checkout (detection is "
                             "built separately); the benchmark runs once it is merged.")
    return Result(name="detection", title=title, status="not available",
                  reason="b4transfer.heads.detection exists but this benchmark is not written yet.")
