"""Settings: each default written once (the YAML), the fpn_channels statements in agreement, and a
mistyped or misplaced key refused in one line naming the key and the fix, before any data is read."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import TINY, compose_cfg

from b4transfer.cli.entry import config_dir
from b4transfer.cli.overrides import check_overrides
from b4transfer.errors import NotSupportedError, UserError
from b4transfer.modes import run

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "b4transfer"
CONF = ROOT / "conf"

# Defaults that drifted when code repeated them: (YAML key, its value, the Python names a fallback or a
# parameter default for it goes by). The value may stand in conf/ once, and in no Python default.
KNOWN_DEFAULTS = [
    ("onnx_opset", "17", ("onnx_opset", "opset")),
    ("draw_score_thresh", "0.3", ("draw_score_thresh", "min_score", "default")),
    ("int8_calibration_images", "64", ("int8_calibration_images",)),
    ("slice_overlap", "0.2", ("slice_overlap",)),
    ("gallery", "16", ("gallery",)),
]


def _python_lines() -> list[tuple[Path, int, str]]:
    return [
        (path, n, line)
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith("#")
    ]


@pytest.mark.parametrize("key,value,names", KNOWN_DEFAULTS, ids=[k for k, _, _ in KNOWN_DEFAULTS])
def test_each_known_default_is_written_once_in_the_yaml(key, value, names):
    in_yaml = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted(CONF.rglob("*.yaml"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.match(rf"\s*{key}:\s*{re.escape(value)}\b", line)
    ]
    assert len(in_yaml) == 1, f"{key}: {value} in {in_yaml}"
    # a fallback (.get("key", value)) or an annotated default (name: type = value) repeating it in Python
    pattern = re.compile(
        rf"""(get\(["']({"|".join(names)})["'],\s*{re.escape(value)}\b)"""
        rf"""|\b({"|".join(names)})\s*:[^=,)]*=\s*{re.escape(value)}\b"""
    )
    repeated = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p, n, line in _python_lines() if pattern.search(line)
    ]
    assert not repeated, f"the default {key}={value} written again in Python: {repeated}"


def test_the_three_fpn_channels_statements_agree():
    from b4transfer.tasks.detection.head import build_detector

    task_yaml = yaml.safe_load((CONF / "task" / "detection.yaml").read_text())["head"]["fpn_channels"]
    signature = inspect.signature(build_detector).parameters["fpn_channels"].default
    demo = (CONF / "task_data" / "detection_demo_detection.yaml").read_text()
    comment = re.search(r"fpn_channels:.*the default (\d+)", demo)
    assert comment, "conf/task_data/detection_demo_detection.yaml no longer names the default width"
    assert task_yaml == signature == int(comment.group(1)), (task_yaml, signature, comment.group(0))


def test_the_classification_task_yaml_names_files_that_exist():
    text = (CONF / "task" / "classification.yaml").read_text()
    named = re.findall(r"\(([\w/]+\.py)\)", text)
    assert named and all((SRC / n).is_file() for n in named), named


@pytest.mark.parametrize(
    "overrides,line",
    [
        (
            ["task=detection", "loss.name=focal"],
            "loss.name=focal: loss.name is a setting of task=classification, not of task=detection "
            "(conf/task/classification.yaml). Fix: drop loss.name, or choose task=classification",
        ),
        (["task=segmentation", "loss.name=focal"], "loss.name is a setting of task=classification, not of "
         "task=segmentation"),
        (["task=detection", "loss.dice_weight=0.5"], "loss.dice_weight is a setting of task=segmentation"),
        (["head.detector=fcos"], "head.detector is a setting of task=detection, not of task=classification"),
    ],
)
def test_a_key_of_another_task_is_one_line_naming_its_task_and_the_fix(overrides, line):
    message = check_overrides(config_dir(), overrides)
    assert message and "\n" not in message and line in message, message


def test_the_cli_refuses_a_misplaced_key_before_hydra_starts(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "task=detection", "loss.name=focal", f"run_dir={tmp_path}/r"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("b4transfer: error: loss.name=focal: loss.name is a setting of task=")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "override,error,match",
    [
        ("predict.slice=640", NotSupportedError,
         r"^task=classification does not support predict.slice=640 \(sliced inference\); it supports "
         r"predict.slice=null.$"),
        ("export.onnx_opset=abc", UserError,
         r"^export.onnx_opset must be an integer opset in 11..21, got 'abc'. Fix: set export.onnx_opset "
         r"to an integer in that range, or drop the override.$"),
    ],
)
def test_a_misplaced_or_mistyped_value_is_refused_before_any_data_is_read(tmp_path, override, error, match):
    """The data root does not exist: reading the data first would fail on it, not on the key."""
    data = ("data=folder", f"data.root={tmp_path / 'nowhere'}")
    cfg = compose_cfg(*TINY, *data, f"run_dir={tmp_path / 'r'}", override)
    with pytest.raises(error, match=match):
        run(cfg)
    assert not (tmp_path / "r").exists()
