"""Shared fixtures: configs composed from conf/ with a tiny backbone on CPU, data made in tmp_path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Tests never touch the network: any hub access fails at once instead of downloading (set before timm
# and huggingface_hub are imported; the tests of the hub path patch or lift it themselves).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from b4transfer.cli.entry import config_dir

# Tiny models on a small, shared CPU: one intra-op thread is many times faster than two (measured 10x
# on 2 busy cores: OpenMP threads spin against other processes). CLI subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The image-check cache of this test session: never the user's ~/.cache (subprocesses inherit it).
os.environ.setdefault(
    "B4TRANSFER_CHECK_CACHE", os.path.join(tempfile.mkdtemp(prefix="b4t-checks-"), "image_checks.sqlite3")
)
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_image_folder(
    root: Path, *, per_class: int = 8, size: int = 40, classes=COLOURS, seed: int = 0
) -> Path:
    """``root/<class>/<i>.png``: noisy images whose mean colour gives the class away."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, size=(size, size, 3))
            arr = np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i:03d}.png")
    return root


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


TINY = (
    "model=test_efficientnet",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "data.num_workers=0",
    "data.batch_size=8",
    "data.image_size=64",
    "scheduler=none",
    "precision=32-true",  # the same numbers on every CPU (auto trains bf16 where it is native)
)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def tiny_cfg(tmp_path, image_folder):
    """A composed config: folder data, tiny backbone, 1 epoch on CPU, run dir in tmp_path."""

    def make(*overrides: str):
        return compose_cfg(
            *TINY, "data=folder", f"data.root={image_folder}", f"run_dir={tmp_path / 'run'}", *overrides
        )

    return make
