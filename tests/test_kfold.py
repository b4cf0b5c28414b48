"""k-fold cross-validation (``data.kfold``) and seed spread (``seeds``): the folds, the repeated runs and
their one summary with per-run results and mean ± sd; what cannot repeat is refused up front."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer.data.boxes import make_sample
from b4transfer.data.kfold import fold_splits
from b4transfer.data.splits import DatasetSplits, Sample
from b4transfer.errors import UserError
from b4transfer.modes import run
from b4transfer.tasks.detection.data.splits import DetectionSplits


def _splits(per_class=(6, 4, 2)) -> DatasetSplits:
    samples = [Sample(Path(f"{c}_{i}.png"), c) for c, n in enumerate(per_class) for i in range(n)]
    return DatasetSplits(["a", "b", "c"], train=samples[::2], val=samples[1::2], test=[Sample(Path("t"), 0)])


def test_folds_partition_the_pool_stratified_and_leave_test_alone():
    splits = _splits()
    folds = [fold_splits(splits, k=3, index=i, source="test") for i in range(3)]
    vals = [{s.path for s in f.val} for f in folds]
    pool = {s.path for s in splits.train + splits.val}
    assert set.union(*vals) == pool and sum(len(v) for v in vals) == len(pool)  # disjoint, covering
    for f, v in zip(folds, vals):
        assert {s.path for s in f.train} == pool - v and f.test == splits.test
        assert sorted(s.target for s in f.val).count(0) == 2  # class a (6 images): 2 in every fold
    again = fold_splits(_splits(), k=3, index=1, source="test")
    assert [s.path for s in again.val] == [s.path for s in folds[1].val]  # the same partition every time


def test_detection_images_are_dealt_round_the_folds_too():
    samples = [make_sample(Path(f"{i}.png"), [[0, 0, 4, 4]], [i % 2], image_id=i, size=(8, 8))
               for i in range(10)]
    splits = DetectionSplits(["a", "b"], [1, 2], train=samples[:8], val=samples[8:])
    folds = [fold_splits(splits, k=3, index=i, source="test") for i in range(3)]
    assert sorted(len(f.val) for f in folds) == [3, 3, 4]
    assert sorted(s.image_id for f in folds for s in f.val) == list(range(10))


def test_kfold_is_refused_where_the_data_cannot_be_cut():
    @dataclass
    class Values:  # a data source of a task of one's own, without sample lists
        table: str

    with pytest.raises(UserError, match=r"data.kfold=3 needs a data source whose splits hold train and val"):
        fold_splits(Values("x.csv"), k=3, index=0, source="data.source my.values")
    with pytest.raises(UserError, match=r"data.kfold=20 needs at least 20 train \+ val samples; .* has 12"):
        fold_splits(_splits(), k=20, index=0, source="folder")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("kfold") / "images", per_class=5, size=32)


def _cfg(images: Path, run_dir: Path, *extra: str):
    return compose_cfg(*TINY, "data=folder", f"data.root={images}", "data.image_size=32",
                       f"run_dir={run_dir}", *extra)


def _check_spread(summary: dict, run_dir: Path, n: int) -> None:
    written = json.loads((run_dir / "summary.json").read_text())
    assert len(written["runs"]) == n
    scores = [r["best_score"] for r in written["runs"]]
    spread = written["spread"]
    assert spread["monitor"] == "val/acc1" and spread["n"] == n
    assert spread["mean"] == pytest.approx(statistics.fmean(scores))
    assert spread["sd"] == pytest.approx(statistics.stdev(scores))
    assert " ± " in spread["text"] and written["best_score"] == pytest.approx(spread["mean"])
    for r in written["runs"]:
        child = Path(r["run_dir"])
        assert child.parent == run_dir and (child / "summary.json").is_file() and (child / "export").is_dir()


@pytest.mark.slow
def test_kfold_trains_every_fold_and_reports_mean_and_sd(images, tmp_path):
    summary = run(_cfg(images, tmp_path / "cv", "data.kfold=3"))
    _check_spread(summary, tmp_path / "cv", 3)
    assert [r["fold"] for r in summary["runs"]] == [0, 1, 2]
    assert sum(r["val_images"] for r in summary["runs"]) == 15  # every image validated once
    assert all(r["train_images"] + r["val_images"] == 15 for r in summary["runs"])


@pytest.mark.slow
def test_seeds_train_once_per_seed_and_report_mean_and_sd(images, tmp_path):
    summary = run(_cfg(images, tmp_path / "seeds", "seeds=[0,1]"))
    _check_spread(summary, tmp_path / "seeds", 2)
    assert [r["seed"] for r in summary["runs"]] == [0, 1] and summary["seeds"] == [0, 1]
    assert [Path(r["run_dir"]).name for r in summary["runs"]] == ["seed0", "seed1"]


@pytest.mark.parametrize(
    "extra,match",
    [
        (("data.kfold=1",), r"data.kfold=1 must be a whole number of folds >= 2"),
        (("data.kfold=3", "data.fold=3"), r"data.fold=3 must be a fold index in 0..2"),
        (("seeds=[0,0]",), r"seeds=\[0, 0\] must be a list of distinct whole numbers"),
        (("seeds=[0,1]", "mode=validate"), r"trains several runs .*for mode=validate pass one"),
        (("data.kfold=3", "ckpt_path=x.ckpt"), r"data.kfold=3 starts new runs and cannot resume"),
        (("seeds=[0,1]", "strategy=ddp", "trainer.devices=2"), r"runs one device at a time; .*multirun"),
    ],
)
def test_what_cannot_repeat_is_refused_in_one_line(images, tmp_path, extra, match):
    with pytest.raises(UserError, match=match) as info:
        run(_cfg(images, tmp_path / "r", *extra))
    assert "\n" not in str(info.value) and not (tmp_path / "r").exists()
