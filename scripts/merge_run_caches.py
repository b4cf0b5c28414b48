"""Merge benchmark run caches (the accuracy suite's ``--cache`` JSON: ``{key: run}``) into one.

Runs made elsewhere (``scripts/gpu_dev_detection.sh`` on a GPU machine writes one cache per set) join the
local cache, so ``python -m benchmarks.run --suite accuracy ... --dev-cached-only`` reports them. A key
already in the destination is kept as it is (a finished run is never replaced); a key whose run differs
there is reported.

    python scripts/merge_run_caches.py /work/data/bench/dev/acc.json gpu/det_text.json gpu/det_emoji.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def merge(dest: Path, sources: list[Path]) -> dict[str, int]:
    """Add every run of ``sources`` that ``dest`` lacks; returns counts of added / kept / differing keys."""
    runs = json.loads(dest.read_text()) if dest.is_file() else {}
    counts = {"added": 0, "kept": 0, "differing": 0}
    for source in sources:
        for key, run in json.loads(source.read_text()).items():
            if key not in runs:
                runs[key], counts["added"] = run, counts["added"] + 1
            else:
                counts["kept" if runs[key] == run else "differing"] += 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(runs, indent=1) + "\n")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="the cache to add to (created if missing)")
    parser.add_argument("sources", type=Path, nargs="+")
    args = parser.parse_args(argv)
    counts = merge(args.dest, args.sources)
    differing = f", {counts['differing']} kept where the source's run differs" if counts["differing"] else ""
    print(f"{args.dest}: {counts['added']} runs added, {counts['kept']} already there{differing}")


if __name__ == "__main__":
    main()
