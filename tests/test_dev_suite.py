"""The multi-dataset dev benchmark (issue 27): the choice rule on hand-made tables, the arms' overrides
against ``conf/``, the set checks, and (smoke: tiny model, random init, two generated class-folder sets,
one epoch) the suite end to end, with every run reused the second time."""

from __future__ import annotations

import json

import pytest
from benchmarks.bench_detection_accuracy import cli_overrides as det_overrides
from benchmarks.bench_detection_accuracy import config_key
from benchmarks.bench_dev_suite import (
    NAIVE,
    SIMPLER,
    choose_arms,
    cls_arms,
    det_arms,
    resolve_sets,
    seg_arms,
    task_sets,
    within_spread_of_best,
)
from benchmarks.bench_segmentation_accuracy import cli_overrides as seg_overrides
from benchmarks.bench_time_to_accuracy import cli_overrides
from benchmarks.choice_rule import across_budgets, choose, combine, ranks
from benchmarks.run import _value
from tests.test_benchmark_time_to_accuracy import _jpeg_class_folders


def _table(rows: dict[str, list[tuple[float, float]]], sets=("a", "b", "c", "d", "e")) -> dict:
    return {arm: {s: {"mean": m, "sd": sd} for s, (m, sd) in zip(sets, cells)} for arm, cells in rows.items()}


def test_an_alternative_that_wins_on_most_sets_and_loses_on_none_becomes_the_default():
    table = _table({
        "defaults": [(0.70, 0.01), (0.60, 0.02), (0.80, 0.01), (0.50, 0.01), (0.90, 0.01)],
        "knob": [(0.75, 0.01), (0.65, 0.01), (0.80, 0.02), (0.56, 0.02), (0.60, 0.01)],
    })
    out = choose(table, held_out=("e",))  # e: a big loss, but held out: it never votes
    row = out["arms"]["knob"]
    assert out["voting_sets"] == ["a", "b", "c", "d"] and out["held_out"] == ["e"]
    assert (row["wins"], row["ties"], row["losses"]) == (3, 1, 0)
    assert row["held_out"] == {"wins": 0, "ties": 0, "losses": 1}
    assert row["per_set"]["b"] == {"gain": 0.05, "spread": 0.02, "norm_gain": 2.5, "outcome": "win"}
    assert row["mean_norm_gain"] == pytest.approx((5 + 2.5 + 0 + 3) / 4, abs=1e-3)
    assert row["mean_rank"] == pytest.approx((1 + 1 + 1.5 + 1) / 4)
    assert out["arms"]["defaults"]["mean_rank"] == pytest.approx((2 + 2 + 1.5 + 2) / 4)
    assert row["verdict"] == "change" and out["arms"]["defaults"]["verdict"] == "reference"


def test_the_default_stays_unless_the_alternative_wins_most_sets_without_a_loss():
    base = [(0.70, 0.01), (0.60, 0.02), (0.80, 0.01), (0.50, 0.01)]
    half = _table({"defaults": base, "knob": [(0.75, 0.01), (0.65, 0.01), (0.80, 0.01), (0.50, 0.01)]},
                  sets="abcd")  # 2 wins of 4: not more than half
    assert choose(half)["arms"]["knob"]["verdict"] == "keep"
    one_loss = _table({"defaults": base, "knob": [(0.75, 0.01), (0.65, 0.01), (0.85, 0.01), (0.40, 0.01)]},
                      sets="abcd")  # 3 wins, but one loss beyond the spread
    row = choose(one_loss)["arms"]["knob"]
    assert (row["wins"], row["losses"], row["verdict"]) == (3, 1, "keep")
    noisy = _table({"defaults": base, "knob": [(0.75, 0.10), (0.65, 0.10), (0.85, 0.10), (0.55, 0.10)]},
                   sets="abcd")  # higher everywhere, but within a seed spread of 0.10
    assert choose(noisy)["arms"]["knob"]["ties"] == 4 and choose(noisy)["arms"]["knob"]["verdict"] == "keep"


def test_a_knob_of_the_defaults_stays_only_where_dropping_it_costs_beyond_the_spread_and_gains_nowhere():
    """The knob holds when dropping it loses beyond the spread on some voting set and wins on none
    (reverting it would leave the defaults beyond the spread of the best there: EMA, label smoothing);
    it is reverted when dropping it ties everywhere or wins somewhere (layer-wise decay)."""
    base = [(0.70, 0.01), (0.60, 0.01), (0.80, 0.01)]
    held = _table({"defaults": base, "no_knob": [(0.65, 0.01), (0.55, 0.01), (0.80, 0.01)]}, sets="abc")
    assert choose(held, simpler={"no_knob"})["arms"]["no_knob"]["verdict"] == "keep"
    one = _table({"defaults": base, "no_knob": [(0.69, 0.01), (0.55, 0.01), (0.80, 0.01)]}, sets="abc")
    assert choose(one, simpler={"no_knob"})["arms"]["no_knob"]["verdict"] == "keep"  # 1 loss of 3, no win
    tied = _table({"defaults": base, "no_knob": [(0.69, 0.01), (0.595, 0.01), (0.80, 0.01)]}, sets="abc")
    assert choose(tied, simpler={"no_knob"})["arms"]["no_knob"]["verdict"] == "revert"  # ties only
    mixed = _table({"defaults": base, "no_knob": [(0.75, 0.01), (0.55, 0.01), (0.80, 0.01)]}, sets="abc")
    assert choose(mixed, simpler={"no_knob"})["arms"]["no_knob"]["verdict"] == "revert"  # a win and a loss
    # without "simpler": an alternative that does not win on most sets leaves the defaults as they are
    assert choose(one)["arms"]["no_knob"]["verdict"] == "keep"


def test_baselines_missing_sets_and_ties_in_rank():
    table = _table({"defaults": [(0.7, 0.0), (0.6, 0.0)], "naive": [(0.5, 0.0), (0.6, 0.0)],
                    "part": [(0.9, 0.0)]}, sets="ab")
    out = choose(table, baselines={"naive"})
    assert out["arms"]["naive"]["verdict"] == "baseline" and out["arms"]["part"]["verdict"] == "incomplete"
    assert out["arms"]["part"]["missing"] == ["b"]
    # one seed: sd 0, so the spread is the floor and the normalised gain stays finite
    assert out["arms"]["naive"]["per_set"]["a"]["spread"] == 0.001
    assert ranks(table, ["b"]) == {"defaults": 1.5, "naive": 1.5, "part": None}
    with pytest.raises(KeyError, match="baseline arm 'defaults'"):
        choose({"x": {}})


def test_several_metrics_combine_conservatively():
    assert combine(["change", "change"], simpler=False) == "change"
    assert combine(["change", "keep"], simpler=False) == "keep"
    assert combine(["keep", "revert"], simpler=True) == "revert"
    assert combine(["keep", "keep"], simpler=True) == "keep"
    assert combine(["incomplete", "keep"], simpler=False) == "incomplete"


def test_a_change_or_a_revert_must_hold_at_every_budget():
    budgets = ["3 epochs", "10 epochs"]
    verdicts = {
        "3 epochs": {"defaults": "reference", "naive": "baseline", "a": "revert", "b": "change",
                     "c": "revert", "d": "keep", "e": "change"},
        "10 epochs": {"defaults": "reference", "naive": "baseline", "a": "revert", "b": "keep",
                      "c": "incomplete"},
    }
    assert across_budgets(verdicts, budgets) == {
        "defaults": "reference", "naive": "baseline", "a": "revert", "b": "keep", "c": "pending", "d": "keep",
        "e": "pending",
    }


def test_defaults_within_the_spread_of_the_best_per_set():
    table = _table({"defaults": [(0.70, 0.02), (0.60, 0.01)], "knob": [(0.71, 0.01), (0.70, 0.01)]},
                   sets="ab")
    assert within_spread_of_best(table) == {"a": True, "b": False}


def test_every_arm_composes_and_flips_a_current_default(tmp_path):
    """The arms' keys exist in conf/ and each changes the composed config (a typo or a no-op would not)."""
    common = dict(weights="null", model_name="tf_efficientnet_lite1", image_size=128, epochs=3, seed=0)
    arms, det_arms_320 = cls_arms(128), det_arms(320)
    assert arms[NAIVE] == NAIVE and arms["res_up"] == ["data.image_size=160"]
    assert set(arms) | set(det_arms_320) >= SIMPLER and det_arms_320["size_up"] == ["data.image_size=384"]
    keys = {arm: config_key(cli_overrides(tmp_path, extra=o, **common))
            for arm, o in arms.items() if o != NAIVE}
    assert len(set(keys.values())) == len(keys)
    det = {arm: config_key(det_overrides(tmp_path, overrides=tuple(o), **common))
           for arm, o in det_arms_320.items() if o != "plain"}
    assert len(set(det.values())) == len(det)
    seg = {arm: config_key(seg_overrides(tmp_path, decoder="fpn", overrides=tuple(o), **common))
           for arm, o in seg_arms(256).items() if o != "smp"}
    assert len(set(seg.values())) == len(seg) and seg_arms(256)["size_up"] == ["data.image_size=320"]


def test_sets_come_from_dev_sets_and_a_missing_one_names_the_build_command(tmp_path):
    voting, held = task_sets("classification")
    assert "cls_sprites" in held and "cls_sprites" not in voting and len(voting) == 4
    assert task_sets("detection")[1] == ["det_emoji"]
    assert task_sets("segmentation") == (["seg_clipart", "seg_portraits"], [])
    with pytest.raises(ValueError, match=r"'seg_clipart' has no images, masks folder.*build_dev_sets.py"):
        resolve_sets({"dev_root": tmp_path}, "segmentation")
    with pytest.raises(ValueError, match=r"'cls_clipart' has no train, val folder.*build_dev_sets.py"):
        resolve_sets({"dev_root": tmp_path}, "classification")
    # a set named on the command line as the shell leaves it (one name, or a list with bare words)
    for sub in ("images", "masks"):
        (tmp_path / "seg_portraits" / sub).mkdir(parents=True)
    for given in ("seg_portraits", _value("[seg_portraits]"), _value('["seg_portraits"]')):
        p = {"dev_root": tmp_path, "sets": given, "held_out": _value("[]")}
        folders, held_out = resolve_sets(p, "segmentation")
        assert list(folders) == ["seg_portraits"] and held_out == [], given
    for sub in ("images", "masks"):
        (tmp_path / "seg_clipart" / sub).mkdir(parents=True)
    two = resolve_sets({"dev_root": tmp_path, "sets": "seg_clipart,seg_portraits"}, "segmentation")[0]
    assert list(two) == ["seg_clipart", "seg_portraits"]  # comma-separated, as --dev-arms takes arms
    assert _value("[0, 2]") == [0, 2] and _value("[a, 1]") == ["a", 1] and _value("fpn") == "fpn"
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['nope'\]"):
        choose_arms(cls_arms(128), {"dev_arms": "no_ema,nope"})
    assert list(choose_arms(cls_arms(128), {"dev_arms": "no_ema"})) == ["defaults", "no_ema"]


def test_without_dev_root_or_weights_the_result_is_skipped():
    from benchmarks.bench_dev_suite import run_task

    result = run_task("classification", "dev_classification",
                      dict(model="m", image_size=32, epochs=1, seeds=[0], dev_root=None, weights=None))
    assert result.status == "skipped" and "--dev-root" in result.reason and "--weights" in result.reason


def _smoke_suite(tmp_path, monkeypatch, name: str, tiny: dict):
    """``(run, markdown)``: ``run()`` runs the smoke accuracy suite's ``name`` with the profile ``tiny`` on
    the sets under ``tmp_path / "dev"`` (one run cache) and returns its result."""
    from benchmarks import run as suite

    monkeypatch.setenv("B4TRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(suite.ACCURACY_PROFILES["smoke"], name, tiny)
    out, md = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    args = ["--suite", "accuracy", "--smoke", "--only", name, "--out-dir", str(out), "--markdown", str(md),
            "--dev-root", str(tmp_path / "dev"), "--cache", str(tmp_path / "runs.json")]

    def run() -> dict:
        assert suite.main(args) == 0
        (result,) = json.loads((out / "accuracy-smoke.json").read_text())["results"]
        assert result["status"] == "ok", result
        return result

    return run, md


@pytest.mark.slow
def test_dev_suite_end_to_end_on_two_tiny_sets_with_runs_reused(tmp_path, monkeypatch):
    for name in ("toy_a", "toy_b"):
        _jpeg_class_folders(tmp_path / "dev" / name, per_split=(("train", 4), ("val", 2)), size=32)
    tiny = dict(model="test_efficientnet", image_size=32, epochs=1, seeds=[0], random_init=True,
                arms=["defaults", "no_label_smoothing"], sets=["toy_a", "toy_b"], held_out=["toy_b"])
    run, md = _smoke_suite(tmp_path, monkeypatch, "dev_classification", tiny)
    result = run()
    d = result["extra"]["dev_suite"]
    assert d["sets"] == ["toy_a", "toy_b"] and d["held_out"] == ["toy_b"]
    table = d["per_set"]["acc1"]
    assert set(table) == {"defaults", "no_label_smoothing"}
    for arm in table.values():
        assert set(arm) == {"toy_a", "toy_b"}
        assert all(0 <= c["mean"] <= 1 and c["n"] == 1 and c["reused"] == 0 and c["wall_s"] > 0
                   for c in arm.values())
    choice = d["choice"]["acc1"]
    assert choice["voting_sets"] == ["toy_a"] and choice["held_out"] == ["toy_b"]
    assert d["verdicts"]["no_label_smoothing"] in ("keep", "revert")  # a simpler arm: never "change"
    assert result["ratio"] is None  # no naive arm here
    text = md.read_text()
    assert "toy_b (held out)" in text and "Choice rule on val acc1" in text
    again = run()  # again: every run comes from the cache
    assert all(c["reused"] == 1 for a in again["extra"]["dev_suite"]["per_set"]["acc1"].values()
               for c in a.values())
    assert again["extra"]["dev_suite"]["per_set"]["acc1"]["defaults"]["toy_a"]["mean"] == \
        table["defaults"]["toy_a"]["mean"]


@pytest.mark.slow
def test_dev_suite_segmentation_end_to_end_on_two_tiny_sets(tmp_path, monkeypatch):
    """The segmentation arms through the same harness: per-set mIoU, the choice rule, the decision table."""
    from b4transfer.tasks.segmentation.data.demo import ensure_demo_masks

    for i, name in enumerate(("seg_a", "seg_b")):
        ensure_demo_masks(tmp_path / "dev" / name, image_size=48, train_images=4, val_images=2, seed=i)
    tiny = dict(model="test_efficientnet", image_size=48, epochs=1, seeds=[0], random_init=True,
                arms=["defaults", "no_ema"], sets=["seg_a", "seg_b"], held_out=[])
    run, md = _smoke_suite(tmp_path, monkeypatch, "dev_segmentation", tiny)
    result = run()
    table = result["extra"]["dev_suite"]["per_set"]["miou"]
    assert set(table) == {"defaults", "no_ema"} and all(set(a) == {"seg_a", "seg_b"} for a in table.values())
    assert all(0 <= c["mean"] <= 1 for a in table.values() for c in a.values())
    assert result["extra"]["dev_suite"]["verdicts"]["no_ema"] in ("keep", "revert")
    text = md.read_text()
    assert "val mIoU per set" in text and "Dev benchmark, segmentation: the decision per arm" in text


def test_run_caches_made_elsewhere_merge_without_replacing_a_finished_run(tmp_path):
    from tests.conftest import load_script

    merge_mod = load_script("merge_run_caches")
    dest, a, b = tmp_path / "acc.json", tmp_path / "a.json", tmp_path / "b.json"
    dest.write_text(json.dumps({"k1": {"v": 1}}))
    a.write_text(json.dumps({"k1": {"v": 1}, "k2": {"v": 2}}))
    b.write_text(json.dumps({"k1": {"v": 9}, "k3": {"v": 3}}))
    assert merge_mod.merge(dest, [a, b]) == {"added": 2, "kept": 1, "differing": 1}
    assert json.loads(dest.read_text()) == {"k1": {"v": 1}, "k2": {"v": 2}, "k3": {"v": 3}}
