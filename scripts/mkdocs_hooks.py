"""mkdocs hooks (``hooks:`` in mkdocs.yml): the benchmark plots in the site, Sphinx roles as code.

``docs/studies/benchmarks.md`` includes the repository's ``BENCHMARKS.md``, whose images point at
``benchmarks/results/*.png`` relative to the repository root; this adds those files to the site at the
same place relative to that page (``studies/benchmarks/results/*.png``), so the report and its plots stay
where ``python -m benchmarks.run`` writes them.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "benchmarks" / "results"


def on_files(files, config):
    """Add every benchmark plot as a generated file of the site."""
    for png in sorted(PLOTS.glob("*.png")):
        files.append(File.generated(config, f"studies/benchmarks/results/{png.name}", abs_src_path=str(png)))
    return files


_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):<code>~?([\w.]+)</code>")


def on_page_content(html, page, config, files):
    """The docstrings' Sphinx cross-reference roles (``:func:`register```) as plain code, as Sphinx
    shows them (``~a.b.C`` as ``C``), and their ``::`` literal-block markers as one colon."""
    html = _ROLE.sub(lambda m: f"<code>{m[1].rsplit('.', 1)[-1] if '~' in m[0] else m[1]}</code>", html)
    return html.replace("::</p>", ":</p>")
