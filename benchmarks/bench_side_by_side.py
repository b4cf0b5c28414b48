"""Two training runs side by side on one machine: each run's wall time against one run alone.

A user on a small machine (a laptop, this 2-core box) starts a second run — another seed, a sweep
point — next to the first. With every run using all cores, how much slower does each get? Ideally
about 2x (the cores are shared); OpenMP threads that spin-wait for their partners while those have
lost their core can make it far worse. Both policies run here, each in the same round:

- ``spin``: libgomp's own default when nothing is set (spin ``GOMP_SPINCOUNT`` = 300 000 times, then
  sleep) — what ``python run.py`` did before it set a policy;
- ``library``: ``python run.py`` as it is now (its CLI sets ``OMP_WAIT_POLICY=PASSIVE`` unless the
  user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``).

Each round, per policy: one run alone, then two started together; ``slowdown`` = each of the pair's
wall time / the median alone run's. The reported ratio is the library's largest slowdown over every
run of every pair (target <= 2.5); the spin policy's is the baseline.
Runs are ``python run.py`` subprocesses on the generated demo data (written once, before timing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Result, median

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"spin": {"GOMP_SPINCOUNT": "300000"}, "library": {}}


def _command(p: dict, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "run.py"),
        f"model.name={p['model']}",
        "model.pretrained=false",
        f"data.image_size={p['image_size']}",
        f"data.batch_size={p['batch_size']}",
        f"trainer.max_epochs={p['epochs']}",
        f"trainer.limit_train_batches={p['train_batches']}",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]


def _env(policy: str, cache: Path) -> dict[str, str]:
    unset = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")  # benchmarks/__init__ sets the first
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["B4TRANSFER_CACHE"] = str(cache)
    return env | POLICIES[policy]


def _runs(p: dict, policy: str, count: int, tmp: Path, cache: Path) -> list[float]:
    """Start ``count`` runs at once; each one's wall seconds."""
    procs = []
    for _ in range(count):
        run_dir = Path(tempfile.mkdtemp(dir=tmp))
        start = time.perf_counter()
        proc = subprocess.Popen(
            _command(p, run_dir), env=_env(policy, cache), cwd=tmp,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        procs.append((proc, start))
    walls = []
    for proc, start in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"training run failed ({policy}):\n{err[-3000:]}")
        walls.append(time.perf_counter() - start)
    return walls


def run(p: dict) -> Result:
    result = Result(
        name="side_by_side",
        title="Two training runs side by side: each one's wall time / one run alone",
        settings=dict(p),
        ratio_kind="wall time of each of two side-by-side runs / one run alone (library policy)",
        target="<= 2.5",
    )
    samples: dict[str, dict[str, list[float]]] = {k: {"alone": [], "pair": []} for k in POLICIES}
    with tempfile.TemporaryDirectory(prefix="b4t-side-") as tmp:
        tmp, cache = Path(tmp), Path(tmp) / "cache"
        _runs(dict(p, epochs=1, train_batches=1), "library", 1, tmp, cache)  # writes the demo data once
        for _ in range(p["rounds"]):
            for policy in POLICIES:
                samples[policy]["alone"] += _runs(p, policy, 1, tmp, cache)
                samples[policy]["pair"] += _runs(p, policy, 2, tmp, cache)
    slowdown = {}
    for policy, s in samples.items():
        alone = median(s["alone"])
        slowdown[policy] = {
            "alone_s": round(alone, 1),
            "pair_s": [round(v, 1) for v in s["pair"]],
            "slowdown": round(median(s["pair"]) / alone, 2),
            "max_slowdown": round(max(s["pair"]) / alone, 2),
        }
    lib, spin = slowdown["library"], slowdown["spin"]
    result.library = {"median": lib["slowdown"], "unit": "x one run alone", "samples": samples["library"]}
    result.baseline = {"median": spin["slowdown"], "unit": "x one run alone (spin)",
                       "samples": samples["spin"]}
    result.ratio = lib["max_slowdown"]
    result.extra = {"policies": slowdown, "cpu_count": os.cpu_count()}
    return result.check()
