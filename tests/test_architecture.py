"""The plug-in rule and the shape of the code: no task named outside its package, no import cycle,
no oversized module, a training entry point that reads in one screen."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from b4transfer import tasks
from b4transfer.modes.train import train

SRC = Path(__file__).resolve().parents[1] / "src" / "b4transfer"
MAX_LINES = 430  # "about 400": one concept per file


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _outside_tasks() -> list[Path]:
    return [p for p in _modules().values() if "tasks" not in p.relative_to(SRC).parts]


def _names_the_task(node: ast.AST) -> bool:
    """``x.task``, ``x.task_name``, ``x["task"]`` or ``x.get("task")``."""
    if isinstance(node, ast.Attribute):
        return node.attr in ("task", "task_name")
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "task"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return any(isinstance(a, ast.Constant) and a.value == "task" for a in node.args)
    return False


def test_no_task_is_named_outside_its_package():
    """Outside ``tasks/``, no string equals a task name and nothing is compared with a ``.task``."""
    names = set(tasks.names())
    found = []
    for path in _outside_tasks():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: literal {node.value!r}")
            sides = [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
            if any(_names_the_task(side) for side in sides):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: comparison with the task name")
    assert not found, "\n".join(found)


def test_the_rule_test_catches_a_task_branch(tmp_path):
    """The scan above does find what it forbids (so its silence means something)."""
    tree = ast.parse('if module.task == "detection":\n    pass\n')
    assert any(isinstance(n, ast.Constant) and n.value in tasks.names() for n in ast.walk(tree))
    for code in ("module.task == name", "cfg.get('task') != name", "hp['task'] in names", "m.task_name == x"):
        compare = ast.parse(code).body[0].value
        assert any(_names_the_task(s) for s in [compare.left, *compare.comparators]), code


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + [base]).strip(".")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycles():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_no_private_helper_is_imported_across_modules():
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("b4transfer"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
                found += [f"{name}: {a} from {node.module}" for a in private]
    assert not found, "\n".join(found)


def test_no_module_is_oversized():
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in _modules().values()}
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


def test_the_training_entry_point_reads_in_one_screen():
    assert len(inspect.getsource(train).splitlines()) <= 40


def test_every_package_ships_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(SRC.parent).parts) for p in SRC.rglob("__init__.py")}
    assert found - listed == set()


TASK_PACKAGES = sorted(p.parent.name for p in (SRC / "tasks").glob("*/__init__.py"))


def _task_of(module: str) -> str | None:
    """The task package a dotted module belongs to (``b4transfer.tasks.<name>...``), else ``None``."""
    parts = module.split(".")
    return parts[2] if len(parts) >= 3 and parts[1] == "tasks" and parts[2] in TASK_PACKAGES else None


def _foreign_task_imports(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` wherever a module imports a task's code from outside that task's package."""
    return [
        f"{name} -> {target}"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if _task_of(target) and _task_of(target) != _task_of(name)
    ]


def test_no_module_imports_another_tasks_code():
    """A task's code is imported only from inside its own package (the registry finds a task by the
    dotted name in ``tasks._BUILTIN``, not by importing it), so shared code never depends on a task and no
    task on another."""
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert set(TASK_PACKAGES) >= {"classification", "detection", "segmentation"}
    assert _foreign_task_imports(graph) == []


def test_the_foreign_import_rule_catches_violations():
    graph = {
        "b4transfer.data.masks": {"b4transfer.tasks.detection.data.splits"},  # shared code -> a task
        "b4transfer.tasks.segmentation.data.datamodule": {"b4transfer.tasks.classification.data.datamodule"},
        "b4transfer.tasks.detection.head": {"b4transfer.tasks.detection.fpn", "b4transfer.tasks.base"},
    }
    assert _foreign_task_imports(graph) == [
        "b4transfer.data.masks -> b4transfer.tasks.detection.data.splits",
        "b4transfer.tasks.segmentation.data.datamodule -> b4transfer.tasks.classification.data.datamodule",
    ]


def _files_naming(word: str, roots: list[Path], skip: Path) -> list[str]:
    """Text files under ``roots`` (outside ``skip``) that contain ``word`` in any case, repo-relative."""
    repo = SRC.parents[1]
    found = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_relative_to(skip) or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            if word in text.lower():
                found.append(str(path.relative_to(repo)))
    return found


def test_segmentation_is_named_only_by_its_package_registry_entry_and_conf():
    """A task is one folder: outside ``tasks/segmentation/``, only the registry entry and segmentation's
    own ``conf/`` YAML name it (12 modules did before the data code moved into the package)."""
    repo = SRC.parents[1]
    found = _files_naming("segmentation", [SRC, repo / "conf"], SRC / "tasks" / "segmentation")
    own_conf = [f for f in found if f.startswith("conf/") and "seg" in Path(f).name]
    assert sorted(set(found) - set(own_conf)) == ["src/b4transfer/tasks/__init__.py"]
    assert own_conf  # the scan does read conf/ (conf/task/segmentation.yaml names it)
