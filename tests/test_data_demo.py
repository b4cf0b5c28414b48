"""The generated demo set: deterministic, written once and atomically, learnable, read by scan_folder."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from b4transfer.data import demo
from b4transfer.data.demo import DEMO_CLASSES, MARKER, default_demo_root, ensure_demo
from b4transfer.data.folder import scan_folder

SMALL = {"image_size": 32, "train_per_class": 3, "val_per_class": 2}


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_demo_is_deterministic_across_folders(tmp_path):
    a, b = ensure_demo(tmp_path / "a", **SMALL), ensure_demo(tmp_path / "b", **SMALL)
    files = _files(a)
    assert files == _files(b) and len(files) == 6 * 5 + 1
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    other = ensure_demo(tmp_path / "c", seed=1, **SMALL)
    assert (other / "train/star/0000.png").read_bytes() != (a / "train/star/0000.png").read_bytes()


def test_demo_is_written_once(tmp_path, monkeypatch):
    root = ensure_demo(tmp_path / "d", **SMALL)
    assert (root / MARKER).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a finished demo set")

    monkeypatch.setattr(demo, "_write_images", fail)
    assert ensure_demo(tmp_path / "d", **SMALL) == root


def test_interrupted_generation_leaves_no_half_dataset(tmp_path, monkeypatch):
    def crash(folder, **kwargs):
        (folder / "train").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_write_images", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo(tmp_path / "d", **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert (ensure_demo(tmp_path / "d", **SMALL) / MARKER).is_file()


def test_demo_never_overwrites_a_users_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(
        FileExistsError, match=r"mine exists but is not a finished demo dataset.*Fix: delete it"
    ):
        ensure_demo(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert (ensure_demo(tmp_path / "empty", **SMALL) / MARKER).is_file()


def test_default_root_uses_the_cache_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("B4TRANSFER_CACHE", str(tmp_path / "cache"))
    root = ensure_demo(**SMALL)
    assert root == tmp_path / "cache" / "demo-v1-32-3-2-0" == default_demo_root(32, 3, 2, 0)
    assert (root / MARKER).is_file()


@pytest.mark.parametrize(
    ("key", "value"), [("image_size", 8), ("train_per_class", 0), ("val_per_class", 1.5)]
)
def test_bad_arguments(tmp_path, key, value):
    with pytest.raises(ValueError, match=rf"demo {key} must be an integer.*got {value}.*data\.{key}"):
        ensure_demo(tmp_path / "x", **{**SMALL, key: value})


def test_default_size_is_fast_learnable_and_read_by_scan_folder(tmp_path):
    start = time.perf_counter()
    root = ensure_demo(tmp_path / "demo")
    assert time.perf_counter() - start < 10
    splits = scan_folder(root)
    assert splits.class_names == sorted(DEMO_CLASSES) and splits.num_classes == 6
    assert (len(splits.train), len(splits.val), splits.skipped) == (240, 72, [])
    with Image.open(splits.train[0].path) as img:
        assert (img.mode, img.size) == ("RGB", (128, 128))

    # The class shows even in 8x8 thumbnails: nearest class mean beats chance (1/6) by far.
    def thumbs(samples):
        x = [np.asarray(Image.open(s.path).resize((8, 8), Image.BOX), np.float32).ravel() for s in samples]
        return np.stack(x), np.array([s.target for s in samples])

    (xt, yt), (xv, yv) = thumbs(splits.train), thumbs(splits.val)
    means = np.stack([xt[yt == c].mean(0) for c in range(6)])
    accuracy = (((xv[:, None] - means[None]) ** 2).sum(-1).argmin(1) == yv).mean()
    assert accuracy > 0.6


def test_dense_demo_sets_check_their_sizes_and_name_their_cache_folder(tmp_path, monkeypatch):
    """The detection and segmentation demos share one DemoSet: same checks, their own bounds and folders."""
    from b4transfer.errors import UserError
    from b4transfer.tasks.detection.data.demo import ensure_demo_detection
    from b4transfer.tasks.segmentation.data.demo import ensure_demo_masks

    with pytest.raises(UserError, match=r"demo image_size must be an integer >= 64, got 32.*data.image_size"):
        ensure_demo_detection(tmp_path / "det", image_size=32)
    with pytest.raises(UserError, match=r"demo val_images must be an integer >= 1, got None.*data.val_im"):
        ensure_demo_masks(tmp_path / "seg", val_images=None)
    with pytest.raises(TypeError, match=r"Unknown demo argument\(s\) \['train_per_class'\]"):
        ensure_demo_masks(tmp_path / "seg", train_per_class=3)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("B4TRANSFER_CACHE", str(tmp_path / "cache"))
    root = ensure_demo_masks(image_size=32, train_images=2, val_images=1, seed=4)
    assert root == tmp_path / "cache" / "demo-masks-v1-32-2-1-4" and (root / MARKER).is_file()
    assert (root / "classes.txt").read_text() == "background\ncircle\nsquare\ntriangle\n"
