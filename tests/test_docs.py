"""The documentation site (issue 26, must-shows 4 and 5): every docs path named in code or configs exists,
no pointer names a README section, the generated config reference is current and lists every key in
``conf/`` with its default, the task pages share their headings, the README is short and keeps the
quickstart, and ``mkdocs build --strict`` passes (when mkdocs is installed)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("src", "conf", "benchmarks", "scripts", "tests", "run.py", "mkdocs.yml", "pyproject.toml",
           "README.md")
POINTER = re.compile(r"(?<![/\w.-])docs/(?P<path>[\w./-]*?)(?:#(?P<anchor>[\w-]+))?(?=[^\w./#-]|\.?$|\.\s)")
README_SECTION = re.compile(r"README(?:'s)?\s+\\?\"[^\"\\]+\\?\"|README\s+section")
TASK_HEADINGS = ["Data layouts", "Keys", "Metrics", "Predict outputs", "Exports"]


def scanned_files() -> list[Path]:
    """Source, config and script files that may point at the docs (this file excluded)."""
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else path.rglob("*")
        files += [p for p in candidates if p.suffix in (".py", ".yaml", ".yml", ".toml", ".sh", ".md")]
    return [p for p in files if p.resolve() != Path(__file__).resolve() and p.is_file()]


def slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    return slugify(re.sub(r"[`*]", "", text).strip(), "-")


def anchors(page: Path) -> set[str]:
    """The heading anchors of a Markdown page (fenced code left out)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def pointers() -> list[tuple[str, int, str, str | None]]:
    """``(file, line, docs path, anchor)`` of every docs/... path named in the scanned files."""
    found = []
    for file in scanned_files():
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            for match in POINTER.finditer(line):
                path = match["path"].rstrip(".")
                found.append((str(file.relative_to(ROOT)), number, path, match["anchor"]))
    return found


def test_every_docs_path_named_in_code_and_configs_exists():
    found = pointers()
    assert len(found) >= 20, found  # the configs' and modules' pointers are found at all
    missing = [f"{f}:{n}: docs/{p}" for f, n, p, _ in found if not (DOCS / p).exists()]
    assert not missing, "named but not in docs/: " + "; ".join(missing)
    bad_anchor = [f"{f}:{n}: docs/{p}#{a}" for f, n, p, a in found
                  if a and (DOCS / p).is_file() and a not in anchors(DOCS / p)]
    assert not bad_anchor, "no such heading: " + "; ".join(bad_anchor)


def test_no_pointer_names_a_readme_section():
    """The README is short now; sections live on docs pages, which the test above checks."""
    stale = [f"{f.relative_to(ROOT)}:{n}: {m[0]}" for f in scanned_files()
             for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
             for m in README_SECTION.finditer(line)]
    assert not stale, 'point at a docs page (docs/<page>.md) instead of README "...": ' + "; ".join(stale)


def test_the_pointer_check_can_fail():
    line = 'see docs/guides/no-such-page.md, docs/guides/tta.md#no-such-heading and docs/guides/tta.md.'
    hits = [(m["path"].rstrip("."), m["anchor"]) for m in POINTER.finditer(line)]
    assert hits == [
        ("guides/no-such-page.md", None), ("guides/tta.md", "no-such-heading"), ("guides/tta.md", None)
    ]
    assert not (DOCS / hits[0][0]).exists() and "no-such-heading" not in anchors(DOCS / hits[1][0])
    assert README_SECTION.search('(README "Which recipe")') and not README_SECTION.search("export/README.md")
    assert README_SECTION.search('f"(README \\"Speed\\": "')  # inside an f-string, quotes escaped


def load_generator():
    path = ROOT / "scripts" / "gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_up_to_date():
    generated = load_generator().render()
    current = (DOCS / "reference" / "config.md").read_text()
    assert current == generated, "docs/reference/config.md is stale: python scripts/gen_config_reference.py"


def reference_tables() -> dict[str, dict[str, str]]:
    """``{conf-relative file: {key: default cell}}`` read back from the generated page."""
    tables, current = {}, None
    for line in (DOCS / "reference" / "config.md").read_text().splitlines():
        if line.startswith("#"):
            named = re.findall(r"`conf/([^`]+\.yaml)`", line)
            current = named[-1] if named else None
            tables.setdefault(current, {})
        elif current and line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            tables[current][cells[0].strip("`")] = cells[1]
    return tables


def leaves(data: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, object]]:
    out = []
    for key, value in data.items():
        here = (*prefix, str(key))
        if isinstance(value, dict) and value:
            out += leaves(value, here)
        else:
            out.append((".".join(here), value))
    return out


def package(path: Path) -> str:
    header = re.search(r"^#\s*@package\s+(\S+)", path.read_text(), flags=re.M)
    if header:
        return "" if header[1] == "_global_" else header[1] + "."
    group = path.parent.relative_to(ROOT / "conf").as_posix()
    return "" if group == "." else group.replace("/", ".") + "."


def test_config_reference_lists_every_key_in_conf_with_its_default():
    tables = reference_tables()
    files = sorted((ROOT / "conf").rglob("*.yaml"))
    checked = 0
    for file in files:
        rel = file.relative_to(ROOT / "conf").as_posix()
        data = {k: v for k, v in (yaml.safe_load(file.read_text()) or {}).items() if k != "defaults"}
        assert rel in tables, f"conf/{rel} has no section in docs/reference/config.md"
        for key, value in leaves(data):
            full = package(file) + key
            assert full in tables[rel], f"conf/{rel}: {full} is not listed"
            cell = tables[rel][full]
            assert cell.startswith("`") and yaml.safe_load(cell.strip("`")) == value, (rel, full, cell, value)
            checked += 1
    assert checked > 250, checked
    groups = (DOCS / "reference" / "config.md").read_text().split("## Config groups")[1].split("## Main")[0]
    for entry in yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            (group, choice), = entry.items()
            choice = yaml.safe_dump(choice).splitlines()[0]
            assert f"| `{group.replace('optional ', '')}` | `{choice}` |" in groups


def test_every_page_closes_its_code_fences():
    """An unclosed fence swallows the rest of a page without any warning from mkdocs."""
    pages = list(DOCS.rglob("*.md"))
    assert len(pages) > 40
    fences = {p: len(re.findall(r"^\s*```", p.read_text(), flags=re.M)) for p in pages}
    odd = [str(p.relative_to(DOCS)) for p, n in fences.items() if n % 2]
    assert not odd, odd


def test_task_pages_have_the_same_headings():
    for task in ("classification", "detection", "segmentation"):
        text = re.sub(r"```.*?```", "", (DOCS / "tasks" / f"{task}.md").read_text(), flags=re.S)
        assert re.findall(r"^## (.+)$", text, flags=re.M) == TASK_HEADINGS, task


def test_the_readme_is_short_keeps_two_quickstart_commands_and_points_at_the_docs():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in quickstart.splitlines() if line.strip()]
    assert len(commands) == 2 and "python run.py" in commands[0] and "pytest" in commands[1], commands
    assert len(readme.splitlines()) <= 200
    assert "docs/index.md" in readme


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", site],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,  # any working directory
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (site / "index.html").is_file() and (site / "tasks" / "detection.html").is_file()
    assert "near_duplicate_threshold" in (site / "reference" / "config.html").read_text()
    api = (site / "reference" / "python-api.html").read_text()
    assert "b4transfer.tasks.register" in api and "UserError" in api  # rendered from the docstrings
    assert "fonts.googleapis" not in (site / "index.html").read_text()  # offline: no web fonts
