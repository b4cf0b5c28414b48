"""Dump the composed config of every ``python run.py`` command in README.md, one YAML file each
(named by the command's words and a short hash).

Run it before and after a change to the configs, then diff the two folders: only intended differences
(e.g. a moved ``_target_`` path) may show::

    python scripts/dump_configs.py /tmp/before     # on the old checkout
    python scripts/dump_configs.py /tmp/after      # on the new one
    diff -r /tmp/before /tmp/after

Each command's ``key=value`` overrides are composed with Hydra's compose API (no run starts, no data is
read); flags (``-m``, ``--cfg job``) are dropped, ``hydra.*`` overrides kept. A command that does not
compose writes its error instead (``# error: ...``), so a refusal that appears or goes away shows too.
Interpolations (``run_dir: ${hydra:runtime.output_dir}``, ...) are written unresolved, keys sorted.
``--conf`` points at another ``conf/`` (e.g. ``git archive <rev> conf | tar -x -C /tmp/old``) for the
"before" side.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(readme: Path) -> list[str]:
    """Every ``python run.py ...`` command of ``readme`` (continuation lines joined, comments cut)."""
    lines = readme.read_text().splitlines()
    commands: list[str] = []
    i = 0
    while i < len(lines):
        found = re.search(r"python run\.py( [^`|]*)?", lines[i])
        if found:
            text = found.group(0)
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            text = re.split(r"\s#", text)[0].strip()  # an inline comment
            commands.append(text)
        i += 1
    return list(dict.fromkeys(commands))


def overrides_of(command: str) -> list[str]:
    """The ``key=value`` overrides of a command (flags and their values dropped)."""
    words = shlex.split(command)[2:]
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--cfg", "-c", "--package", "-p"):
            skip = True
            continue
        if not re.match(r"^[+~]*[\w./@-]+=", word):
            continue  # a flag (-m), or prose
        key, _, value = word.partition("=")
        out.append(f"{key}={os.path.expanduser(value) if value.startswith('~') else value}")  # as bash does
    return out


def dump(command: str, conf: str) -> str:
    """The composed config of ``command`` as YAML (or its composition error)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [o for o in overrides_of(command) if not o.startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - recorded in the dump: a refusal is a result too
        first = str(err).splitlines()[0] if str(err) else ""
        return f"# {command}\n# error: {type(err).__name__}: {first}\n"
    import yaml

    tree = OmegaConf.to_container(cfg, resolve=False)  # sorted below: where a key is written is no change
    return f"# {command}\n" + yaml.safe_dump(tree, sort_keys=True, default_flow_style=False, width=200)


def file_name(command: str) -> str:
    """A file name for ``command``'s dump: its words, made safe, and a short hash (unique, stable when
    README lines move)."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", command.removeprefix("python run.py").strip())[:60] or "default"
    return f"{slug}-{hashlib.sha1(command.encode()).hexdigest()[:6]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <n>.yaml into (created)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--conf", type=Path, default=ROOT / "conf")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    commands = readme_commands(args.readme)
    for command in commands:
        (args.out / f"{file_name(command)}.yaml").write_text(dump(command, str(args.conf.resolve())))
    print(f"{len(commands)} commands -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
