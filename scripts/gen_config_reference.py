"""Write ``docs/reference/config.md``: every key in ``conf/`` with its default and meaning.

The meaning of a key is the comment beside it in the YAML file (with the comment lines that continue it,
aligned under it), plus a block comment on the lines just above it; a file's header comment describes the
file. Defaults are read with PyYAML, so the table shows what Hydra composes from that file. The key's
full name comes from the file's package: its group path (``conf/data/csv.yaml`` -> ``data.csv``), or the
``# @package`` line (``_global_``: no prefix; ``trainer``: ``trainer.precision``).

    python scripts/gen_config_reference.py           # rewrite docs/reference/config.md
    python scripts/gen_config_reference.py --check   # exit 1 when the file is out of date

``tests/test_docs.py`` runs ``--check``'s comparison and checks every key in ``conf/`` is listed.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OUT = ROOT / "docs" / "reference" / "config.md"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#'\"-][^:#]*?):(?:[ \t]+(?P<rest>.*))?$")
_COMMENT = re.compile(r"^(?P<indent> *)#(?P<text>.*)$")
_DEFAULT = re.compile(r"^\s*-\s*(?:optional\s+)?(?P<entry>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$")


@dataclass
class Row:
    """One key of one file: its full dotted name, its default and the comment that explains it."""

    key: str
    default: object
    meaning: str
    leaf: bool


@dataclass
class Section:
    """One YAML file under ``conf/``."""

    path: str  # relative to conf/, e.g. data/csv.yaml
    prefix: str  # the package the file's keys live in ("" for _global_)
    header: list[str] = field(default_factory=list)
    defaults: list[tuple[str, str]] = field(default_factory=list)  # (entry, comment)
    rows: list[Row] = field(default_factory=list)


def split_comment(rest: str) -> tuple[str, str | None, int]:
    """``(value text, comment or None, offset of the '#' in rest)`` of what follows ``key:``."""
    if rest.startswith("#"):
        return "", rest[1:].strip(), 0
    at = rest.find(" #")
    if at < 0:
        return rest.strip(), None, -1
    return rest[:at].strip(), rest[at + 2:].strip(), at + 1


def joined(inline: str | None, block: list[str]) -> str:
    """A key's meaning: its own comment, then the block comment above it."""
    return " — ".join(part for part in (inline or "", " ".join(block)) if part)


def package_of(path: Path, lines: list[str]) -> str:
    """The dotted package of a config file's keys."""
    for line in lines:
        match = re.match(r"^#\s*@package\s+(\S+)", line)
        if match:
            return "" if match[1] == "_global_" else match[1]
    group = path.relative_to(CONF).parent.as_posix()
    return "" if group == "." else group.replace("/", ".")


def parse_comments(lines: list[str]) -> tuple[list[str], dict[tuple[str, ...], str], list[tuple[str, str]]]:
    """The header comment, ``{key path: meaning}`` and the ``defaults`` entries of one file's lines."""
    header, meanings, defaults = [], {}, []
    stack: list[tuple[int, str]] = []
    block: list[str] = []  # comment lines waiting for the key below them
    last: tuple[tuple[str, ...], int] | None = None  # (key path, column of its inline comment)
    in_defaults, seen_key = False, False
    for line in lines:
        if not line.strip():
            last = None
            continue
        comment = _COMMENT.match(line)
        if comment:
            text = comment["text"].strip()
            if "@package" in text:
                continue
            if last and len(comment["indent"]) == last[1]:
                meanings[last[0]] += " " + text
            elif not seen_key:
                header.append(comment["text"].rstrip())
            else:
                block.append(text)
            continue
        seen_key = True
        entry = _DEFAULT.match(line) if in_defaults and line.lstrip().startswith("-") else None
        if entry:
            defaults.append((entry["entry"], joined(entry["comment"], block)))
            block, last = [], None
            continue
        match = _KEY.match(line)
        if not match:  # a list item or a continued value
            last = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"].strip()))
        path = tuple(k for _, k in stack)
        in_defaults = path == ("defaults",)
        _, text, at = split_comment(match["rest"] or "")
        meanings[path] = joined(text, block)
        block = []
        last = (path, line.index(match["rest"]) + at) if text is not None else None
    return header, meanings, defaults


def flatten(value: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object, bool]]:
    """``(key path, default, is_leaf)`` of every key under a mapping, depth first, in file order."""
    rows = []
    for key, sub in value.items():
        here = (*path, str(key))
        nested = isinstance(sub, dict) and bool(sub)
        rows.append((here, sub, not nested))
        if nested:
            rows.extend(flatten(sub, here))
    return rows


def read_section(path: Path) -> Section:
    """Parse one config file."""
    lines = path.read_text().splitlines()
    header, meanings, defaults = parse_comments(lines)
    section = Section(path.relative_to(CONF).as_posix(), package_of(path, lines), header, defaults)
    data = yaml.safe_load(path.read_text()) or {}
    for key_path, default, leaf in flatten({k: v for k, v in data.items() if k != "defaults"}):
        full = ".".join([section.prefix, *key_path] if section.prefix else key_path)
        section.rows.append(Row(full, default, meanings.get(key_path, ""), leaf))
    return section


def group_order(main: Section) -> list[str]:
    """Config groups in the order config.yaml's defaults list picks them, then the others."""
    order = [entry.split(":")[0].strip() for entry, _ in main.defaults if ":" in entry]
    groups = sorted({p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")} - {"."})
    return [g for g in order if g in groups] + [g for g in groups if g not in order]


def collect() -> tuple[Section, list[tuple[str, list[Section]]]]:
    """The main config and every group's files (shared pieces, starting with ``_``, first)."""
    main = read_section(CONF / "config.yaml")
    groups = []
    for group in group_order(main):
        files = sorted((CONF / group).glob("*.yaml"), key=lambda p: (not p.stem.startswith("_"), p.stem))
        groups.append((group, [read_section(p) for p in files]))
    return main, groups


def show(value: object) -> str:
    """A default as YAML flow text (what you would write on the command line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, sort_keys=False).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def prose(text: str) -> str:
    """Comment text made safe for Markdown (no HTML tags, emphasis, links or cell breaks)."""
    text = text.replace("\\", "\\\\").replace("<", "&lt;")
    for char in "*`[]|":
        text = text.replace(char, "\\" + char)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)  # not inside snake_case
    return re.sub(r"\bdocs/([\w/.-]+?\.md)", r"[docs/\1](../\1)", text)  # a page of this site: a link


def render_header(lines: list[str]) -> list[str]:
    """A file's header comment: prose joined into a paragraph, indented command lines as code."""
    out, words, code = [], [], []
    for line in lines + [""]:
        body = line[1:] if line.startswith("#") else line
        if body.startswith("   ") and body.strip():
            code.append(body.strip())
            continue
        if code:
            out += ([" ".join(words), ""] if words else []) + ["```bash", *code, "```", ""]
            words, code = [], []
        if body.strip():
            words.append(body.strip())
    if words:
        out += [" ".join(words), ""]
    return [prose(line) if line and not line.startswith("```") and not _is_code(out, i) else line
            for i, line in enumerate(out)]


def _is_code(lines: list[str], i: int) -> bool:
    """Whether ``lines[i]`` sits inside a fenced block."""
    return lines[:i].count("```bash") > sum(1 for line in lines[:i] if line == "```")


def render_table(rows: list[Row]) -> list[str]:
    """The key | default | meaning table of one file."""
    out = ["| key | default | meaning |", "|---|---|---|"]
    for row in rows:
        default = f"`{show(row.default)}`" if row.leaf else ""
        out.append(f"| `{row.key}` | {default} | {prose(row.meaning)} |")
    return out + [""]


def title_of(group: str, section: Section) -> str:
    """A section heading: the choice it is (``model=efficientnet_b4``) or the file it is."""
    stem = Path(section.path).stem
    if stem.startswith("_") or group == "task_data":
        return f"`conf/{section.path}`"
    return f"`{group}={stem}` (`conf/{section.path}`)"


def render_section(title: str, section: Section) -> list[str]:
    """One file: heading, header comment, what it includes / overrides, its keys."""
    out = [f"### {title}", "", *render_header(section.header)]
    if section.defaults:
        entries = ", ".join(f"`{entry}`" for entry, _ in section.defaults)
        out += [f"Defaults list: {entries}.", ""]
    return out + (render_table(section.rows) if section.rows else ["(no keys of its own)", ""])


def render_groups(main: Section) -> list[str]:
    """The config groups config.yaml picks, with their default choice, comment and choices."""
    out = ["| group | default | choices | meaning |", "|---|---|---|---|"]
    for entry, comment in main.defaults:
        if ":" not in entry:
            continue
        group, choice = (s.strip() for s in entry.split(":", 1))
        folder = CONF / group
        choices = sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))
        listed = ", ".join(f"`{c}`" for c in choices)
        out.append(f"| `{group}` | `{choice}` | {listed} | {prose(comment)} |")
    return out + [""]


def render() -> str:
    """The whole page."""
    main, groups = collect()
    out = [
        "# Configuration keys",
        "",
        "<!-- Generated by scripts/gen_config_reference.py from conf/; do not edit: change the comments",
        "     in conf/ and run `python scripts/gen_config_reference.py` (tests/test_docs.py checks it). -->",
        "",
        "Every key in `conf/`, with its default and the comment beside it in the YAML file. Override",
        "any key on the command line (`python run.py optim.lr=3e-4`), pick a group's choice (`optim=sgd`),",
        "add a key that is not there with `+key=value`; `python run.py --cfg job ...` prints the composed",
        "config. A task's file (`task=detection`) and an experiment (`experiment=ra2`) override keys of the",
        "groups before them.",
        "",
        "## Config groups",
        "",
        *render_groups(main),
        "## Main config (`conf/config.yaml`)",
        "",
        *render_header(main.header),
        *render_table(main.rows),
    ]
    for group, sections in groups:
        out += [f"## `{group}`", ""]
        for section in sections:
            out += render_section(title_of(group, section), section)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the page, or with ``--check`` only say whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/reference/config.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.is_file() else ""
        if current != text:
            print(f"{OUT} is out of date: run python scripts/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
