"""``python run.py --help``: what a new user needs on one screen, read from the code and ``conf/``.

The tasks come from the task registry, the config groups and their choices from Hydra's config
search path (files starting with ``_`` are shared pieces, never choices), and each key's line from the
comment beside it in ``conf/``; only the modes' one-liners and the examples are written here.
"""

from __future__ import annotations

import re
from pathlib import Path

from b4transfer import __version__

# One line per mode (tests check these match the modes the CLI runs).
MODE_HELP = {
    "train": "fine-tune; best + last checkpoints, the best weights exported (default)",
    "validate": "score a checkpoint (ckpt_path=) on the validation split",
    "test": "score a checkpoint on the test split (val when there is none)",
    "predict": "predictions for predict.input (an image or a folder): predictions.csv",
    "embed": "pooled backbone features of predict.input: embeddings.npy + embeddings.csv",
    "export": "export a checkpoint in every export.format (timm, onnx, openvino, onnx_int8)",
    "lr_find": "learning-rate range test: lr_find.png and the suggested optim.lr",
    "audit": "data audit: duplicates, leakage, near-duplicates, likely label errors (audit.md)",
    "push": "upload an export folder to the Hugging Face Hub (push.repo_id=, push.dir=)",
    "distill": "train a small student (distill.student=) on a teacher's soft targets (distill.teacher=)",
}

# The most used keys, with the file under conf/ whose comment describes them.
KEYS = (
    ("data.root", "data/folder.yaml"),
    ("data.batch_size", "data/_common.yaml"),
    ("data.image_size", "data/_common.yaml"),
    ("data.num_workers", "data/_common.yaml"),
    ("model.name", "model/efficientnet_b4.yaml"),
    ("model.pretrained", "model/efficientnet_b4.yaml"),
    ("model.weights", "model/efficientnet_b4.yaml"),
    ("trainer.max_epochs", "trainer/default.yaml"),
    ("trainer.accelerator", "trainer/default.yaml"),
    ("optim.lr", "optim/adamw.yaml"),
    ("ckpt_path", "config.yaml"),
    ("seeds", "config.yaml"),
    ("early_stopping.patience", "config.yaml"),
    ("predict.input", "config.yaml"),
    ("export.format", "config.yaml"),
    ("hydra.run.dir", "config.yaml"),
)

EXAMPLES = (
    ("python run.py", "fine-tune B4 on the generated demo data"),
    ("python run.py model.pretrained=false trainer.max_epochs=1", "no download: random init, one epoch"),
    ("python run.py data=folder data.root=/data/pets", "your class folders: root/<class>/*.jpg"),
    ("python run.py task=detection data=coco data.root=/data/coco", "object detection on COCO annotations"),
    ("python run.py mode=predict ckpt_path=last predict.input=/data/new", "predict with the newest run"),
    ("python run.py -m optim.lr=1e-3,3e-4", "a sweep (Hydra multirun), one run each"),
    ("python run.py --cfg job data=folder", "print the composed config instead of running"),
)

# Pages of the documentation site (docs/, built with mkdocs) that --help points to; tests check they exist.
DOCS = (
    ("docs/get-started.md", "install, offline weights, the run directory"),
    ("docs/tasks/classification.md", "data, keys, metrics, outputs (one page per task in docs/tasks/)"),
    ("docs/modes/index.md", "what each mode= does"),
    ("docs/guides/fine-tuning.md", "schedules, learning rates, precision, clusters, ... (docs/guides/)"),
    ("docs/reference/config.md", "every key with its default and meaning"),
)

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")


def version_text() -> str:
    """What ``--version`` prints."""
    return f"b4transfer {__version__}"


def key_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """``{dotted key: the comment on its line}`` of a block-style YAML file (keys without one are left
    out; a comment that continues on the next lines is cut to its first line)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    for line in path.read_text().splitlines():
        match = _KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([prefix] * bool(prefix) + [k for _, k in stack] + [match["key"]])
        stack.append((indent, match["key"]))
        _, hash_, comment = match["rest"].partition("#")
        if hash_ and comment.strip():
            comments[dotted] = comment.strip()
    return comments


def key_help(conf: Path) -> list[tuple[str, str]]:
    """``(key, comment)`` of each of :data:`KEYS`, the comment read from its file under ``conf``."""
    lines = []
    for key, file in KEYS:
        group = "" if "/" not in file else file.split("/")[0]
        lines.append((key, key_comments(conf / file, prefix=group).get(key, "")))
    return lines


def _internal_groups(conf: Path) -> set[str]:
    """Groups config.yaml picks by interpolation (``task_data: ${task}_${data}``): chosen for you."""
    text = (conf / "config.yaml").read_text()
    return set(re.findall(r"^\s*-\s*(?:optional\s+)?(\w+):\s*\$\{", text, flags=re.M))


def group_choices(conf: Path) -> list[tuple[str, list[str], str | None]]:
    """``(group, choices, default)`` of every config group a user picks (not Hydra's own, not the
    internal ones); choices whose name starts with ``_`` are shared pieces and left out."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    hidden = {"hydra"} | _internal_groups(conf)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        defaults = compose(config_name="config", return_hydra_config=True).hydra.runtime.choices
        return [
            (group, visible_choices(loader.get_group_options(group)), defaults.get(group))
            for group in loader.list_groups("")
            if group not in hidden
        ]


def visible_choices(options: list[str]) -> list[str]:
    """A group's choices without its shared pieces (``_common`` and the like)."""
    return [o for o in options if not o.startswith("_")]


def task_lines(conf: Path) -> list[tuple[str, str]]:
    """``(name, first sentence of conf/task/<name>.yaml's header comment)`` for each registered task."""
    from b4transfer import tasks

    lines = []
    for name in tasks.names():
        file = conf / "task" / f"{name}.yaml"
        header = []
        for line in file.read_text().splitlines() if file.is_file() else []:
            if not line.startswith("#"):
                break
            if "@package" not in line:
                header.append(line.lstrip("# ").rstrip())
        first = re.sub(r"\s*\([^)]*\)", "", " ".join(header).split(". ")[0]).rstrip(".")
        lines.append((name, first or "(a registered task)"))
    return lines


def _table(rows, indent: int = 2) -> list[str]:
    width = max(len(a) for a, _ in rows) + 2
    return [" " * indent + (f"{a:<{width}}{b}" if b else a) for a, b in rows]


def help_text(conf: str | Path) -> str:
    """The whole ``--help`` text for the configs in ``conf``."""
    conf = Path(conf)
    groups = [
        (f"{group}=", ", ".join(f"{c}*" if c == default else c for c in choices))
        for group, choices, default in group_choices(conf)
    ]
    parts = [
        f"{version_text()}: fine-tune timm's EfficientNet-B4 (or any timm EfficientNet) with Lightning.",
        "",
        "Usage: python run.py [key=value ...]     (the b4transfer command is the same)",
        "       python run.py -m key=a,b ...      a sweep: one run per value (Hydra multirun)",
        "",
        "Tasks (task=...):",
        *_table(task_lines(conf)),
        "",
        "Modes (mode=...):",
        *_table(list(MODE_HELP.items())),
        "",
        "Config groups (group=choice; * = default; each task= picks its own demo data):",
        *_table(groups),
        "",
        "Most used keys (every key: python run.py --cfg job; a new key: +key=value):",
        *_table(key_help(conf)),
        "",
        "Examples:",
        *_table(list(EXAMPLES)),
        "",
        "Docs (the source tree's docs/; mkdocs serve shows them as a site):",
        *_table(list(DOCS)),
        f"Every key with its comment: the YAML files in {conf}",
        "Also: --cfg job|hydra|all [--resolve], --info, -m/--multirun, --version; --hydra-help (Hydra's).",
    ]
    return "\n".join(parts) + "\n"
