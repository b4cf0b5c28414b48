"""Shared helpers: interleaved timing, result records, machine description, RSS.

Every benchmark times a library path against a baseline **in the same process, interleaved**
(A B, B A, A B, ... after warm-up), so that a change in machine load hits both alike; it reports
the median of each side and the median of the per-round ratios, which is robust to load spikes
on a shared machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Result:
    """One benchmark's outcome, as written to the JSON and the markdown table.

    ``ratio`` is oriented so that the target reads naturally: a time ratio ``library / baseline``
    for overheads (target ``<=``), a speed-up ``library / baseline`` in images/s otherwise (``>=``).
    """

    name: str
    title: str
    status: str = "ok"  # ok | not available | skipped | error
    reason: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    library: dict[str, Any] = field(default_factory=dict)  # {"median", "unit", "samples"}
    baseline: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    ratio_kind: str = ""  # e.g. "time library / plain loop"
    target: str = ""  # e.g. "<= 1.03"
    passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time the benchmark took

    def check(self) -> Result:
        """Set ``passed`` from ``ratio`` and ``target``."""
        if self.ratio is not None and self.target:
            op, value = self.target.split()
            self.passed = self.ratio <= float(value) if op == "<=" else self.ratio >= float(value)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes; on CUDA, synchronised before and after."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], float]], *, rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each ``fn`` (which returns the seconds it measured) ``warmup + rounds`` times, interleaved.

    The order flips every round (A B, B A, ...) so neither side always runs right after the other.
    Returns the ``rounds`` measured samples per name, warm-up dropped.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds = fns[name]()
            if r >= warmup:
                samples[name].append(seconds)
    return samples


def endless(loader: Iterable) -> Iterator:
    """The batches of ``loader``, epoch after epoch (a new pass, and so a new shuffle, each time)."""
    while True:
        yield from loader


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratio_of_rounds(top: list[float], bottom: list[float]) -> float:
    """Median over rounds of ``top[i] / bottom[i]`` (samples taken side by side)."""
    return median([t / b for t, b in zip(top, bottom)])


def side(samples: list[float], unit: str, **extra: Any) -> dict[str, Any]:
    return {"median": median(samples), "unit": unit, "samples": [round(s, 6) for s in samples], **extra}


def machine() -> dict[str, Any]:
    """CPU / GPU, core count, load, and library versions: recorded with every result file."""
    import lightning
    import timm
    import torchvision

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native_cpu": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send stdout/stderr (progress bars, model summaries) to /dev/null."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; 0 elsewhere)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0
