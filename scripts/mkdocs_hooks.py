"""mkdocs hooks (``hooks:`` in mkdocs.yml): put the benchmark plots into the site.

``docs/studies/benchmarks.md`` includes the repository's ``BENCHMARKS.md``, whose images point at
``benchmarks/results/*.png`` relative to the repository root; this adds those files to the site at the
same place relative to that page (``studies/benchmarks/results/*.png``), so the report and its plots stay
where ``python -m benchmarks.run`` writes them.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "benchmarks" / "results"


def on_files(files, config):
    """Add every benchmark plot as a generated file of the site."""
    for png in sorted(PLOTS.glob("*.png")):
        files.append(File.generated(config, f"studies/benchmarks/results/{png.name}", abs_src_path=str(png)))
    return files
