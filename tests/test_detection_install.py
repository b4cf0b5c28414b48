"""task=detection without its COCO mAP packages (an install with ``--no-deps``): refused in one line naming
the package and the fix, before any work; the plain install lists them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.conftest import TINY, compose_cfg

from b4transfer.cli import entry as cli
from b4transfer.errors import MissingDependencyError
from b4transfer.modes import run
from b4transfer.tasks.detection import DetectionModule
from b4transfer.tasks.detection.head import map_backend

ROOT = Path(__file__).resolve().parents[1]
MAP_PACKAGES = ("faster_coco_eval", "pycocotools")
REFUSAL = r"task=detection computes COCO mAP with the package faster-coco-eval .* Fix: pip install faster"


@pytest.fixture
def no_map_packages(monkeypatch):
    """Importing either package fails, as where it is not installed."""
    for name in MAP_PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError


def test_the_plain_install_brings_the_map_packages():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert {"faster-coco-eval", "pycocotools"} <= names
    assert set(project["optional-dependencies"]["detection"]) <= set(project["dependencies"])  # the alias
    assert map_backend() == "faster_coco_eval"  # installed here, as the plain install does


@pytest.mark.parametrize("mode", ["train", "audit"])
def test_detection_without_the_map_packages_is_refused_before_any_work(no_map_packages, tmp_path, mode):
    run_dir, demo = tmp_path / "run", tmp_path / "data"
    where = (f"data.source.root={demo}", f"run_dir={run_dir}")
    cfg = compose_cfg(*TINY, "task=detection", f"mode={mode}", *where)
    with pytest.raises(MissingDependencyError, match=REFUSAL) as refused:
        run(cfg)
    assert "\n" not in str(refused.value)
    assert not run_dir.exists() and not demo.exists(), "refused before any work"


def test_a_detection_checkpoint_cannot_load_without_them_either(no_map_packages):
    """mode=predict / validate / export load the checkpoint first: building the module refuses the same."""
    with pytest.raises(MissingDependencyError, match=REFUSAL):
        DetectionModule(class_names=["a"], model={"name": "test_efficientnet", "pretrained": False},
                        head={"fpn_channels": 32}, data={"image_size": 64})


def test_pycocotools_alone_is_enough(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    assert map_backend() == "pycocotools"


def test_the_cli_shows_the_refusal_as_one_line_with_exit_2(no_map_packages, tmp_path, capsys):
    demo, run_dir = tmp_path / "demo", tmp_path / "run"
    cfg = compose_cfg(*TINY, "task=detection", f"data.source.root={demo}", f"run_dir={run_dir}")
    with pytest.raises(SystemExit) as stopped:
        cli._main(cfg)
    message = capsys.readouterr().err.strip().splitlines()[0]  # then the CLI's hint on the traceback
    assert stopped.value.code == 2 and message.startswith("b4transfer: error: task=detection computes COCO")
    assert "pip install faster-coco-eval" in message
