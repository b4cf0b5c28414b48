"""The inference benchmark's quick profile with one named ``predict.runtime`` instead of ``auto``.

``python scripts/inference_runtime_ratio.py onnxruntime`` prints the library's images/s, the naive fp32
timm loop's and their ratio (the same interleaved rounds as ``benchmarks.run --suite cpu --quick --only
inference``; nothing is written). Used to show the speed-up without INT8
(docs/studies/prediction-runtimes.md).
"""

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from benchmarks import bench_inference  # noqa: E402
from benchmarks.run import PROFILES  # noqa: E402


def main(runtime: str) -> None:
    profile = dict(PROFILES["quick"]["inference"], runtime=runtime)
    result = dataclasses.asdict(bench_inference.run(profile))
    print(json.dumps({k: result.get(k) for k in ("status", "ratio", "library", "baseline")}, default=str))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "onnxruntime")
