"""The detection accuracy-parity benchmark (smoke: tiny model, generated COCO set, one epoch): it runs
the library through the CLI and the plain torchvision loop, reports per-epoch mAP for both, reuses
finished runs by their composed config, and explains itself without data."""

from __future__ import annotations

import json

import pytest
import timm
from safetensors.torch import save_file

from b4transfer.tasks.detection.data.demo import ensure_demo_detection


@pytest.mark.slow
def test_accuracy_suite_measures_library_and_plain_loop_and_reuses_runs(tmp_path, monkeypatch):
    from benchmarks import run as suite

    monkeypatch.setenv("B4TRANSFER_CACHE", str(tmp_path / "cache"))
    data = ensure_demo_detection(tmp_path / "det", image_size=64, train_images=8, val_images=4, seed=0)
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(weights))
    out, md, cache = tmp_path / "results", tmp_path / "BENCHMARKS.md", tmp_path / "runs.json"
    args = ["--suite", "accuracy", "--smoke", "--out-dir", str(out), "--markdown", str(md), "--det-data",
            str(data), "--weights", str(weights), "--cache", str(cache)]
    tiny = dict(model="test_efficientnet", image_size=64, epochs=1, seeds=[0], workers=2)
    monkeypatch.setitem(suite.ACCURACY_PROFILES["smoke"], "detection_accuracy", tiny)
    assert suite.main(args) == 0
    result = json.loads((out / "accuracy-smoke.json").read_text())["results"][0]
    assert result["status"] == "ok", result
    arms = result["extra"]["arms"]
    assert set(arms) == {"library", "plain", "library_plain_recipe"}
    for arm in arms.values():
        assert len(arm["per_epoch"]) == 1 and 0.0 <= arm["map_50"] <= 1.0 and arm["reused"] == 0
    runs = json.loads(cache.read_text())
    assert len(runs) == 3  # the defaults (fitted anchors, batch 2) are not the plain loop's settings
    text = md.read_text()
    assert "library_plain_recipe" in text and "mAP@50 per epoch" in text
    # a second call repeats nothing: every run is found by its composed config
    assert suite.main(args) == 0
    again = json.loads((out / "accuracy-smoke.json").read_text())["results"][0]
    assert all(a["reused"] == 1 for a in again["extra"]["arms"].values())
    assert again["extra"]["arms"]["plain"]["per_seed_map_50"] == arms["plain"]["per_seed_map_50"]


def test_accuracy_suite_without_data_is_skipped_with_the_reason(tmp_path):
    from benchmarks.run import main

    out, md = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    assert main(["--suite", "accuracy", "--smoke", "--out-dir", str(out), "--markdown", str(md)]) == 0
    result = json.loads((out / "accuracy-smoke.json").read_text())["results"][0]
    assert result["status"] == "skipped" and "--det-data" in result["reason"]


def test_a_changed_config_is_a_different_run():
    from benchmarks.bench_detection_accuracy import cli_overrides, config_key

    settings = dict(weights="w", model_name="test_efficientnet", image_size=64, epochs=1)
    base = config_key(cli_overrides("d", seed=0, **settings))
    assert base == config_key(cli_overrides("d", seed=0, **settings))
    assert base != config_key(cli_overrides("d", seed=1, **settings))
    assert base != config_key(cli_overrides("d", seed=0, overrides=("optim.lr=0.01",), **settings))


def test_a_later_config_key_at_its_neutral_value_keeps_the_run_key():
    from benchmarks.bench_detection_accuracy import NEUTRAL, cli_overrides, config_key

    settings = dict(weights="w", model_name="test_efficientnet", image_size=64, epochs=1)
    base = config_key(cli_overrides("d", seed=0, **settings))
    assert "head.head_norm" in NEUTRAL
    assert base == config_key(cli_overrides("d", seed=0, overrides=("head.head_norm=null",), **settings))
    assert base != config_key(cli_overrides("d", seed=0, overrides=("head.head_norm=group",), **settings))


def test_every_config_key_is_known_to_the_run_cache():
    """A key added to conf/ changes every run key: declare it neutral (its default changes no training)
    in ``NEUTRAL``, or accept that the cached accuracy runs are re-run."""
    import json

    from benchmarks.bench_detection_accuracy import AFTER_TRAINING, KNOWN_KEYS, NEUTRAL, ROOT, cli_overrides
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    args = cli_overrides("d", weights="w", model_name="test_efficientnet", image_size=64, epochs=1, seed=0)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=args), resolve=False)

    def leaves(node, prefix=""):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]

    cfg = {k: v for k, v in cfg.items() if k not in AFTER_TRAINING}
    new = set(leaves(cfg)) - set(json.loads(KNOWN_KEYS.read_text())) - set(NEUTRAL) - {"run_dir"}
    assert not new, f"config keys unknown to the accuracy cache: {sorted(new)}; add neutral ones to NEUTRAL"


def test_a_gpu_run_has_its_own_cache_key_and_the_cpu_keys_stay_as_they_were(tmp_path):
    """``device=cuda`` (the dev suite's GPU profile) trains the library with trainer=gpu and the plain loop
    with --device cuda: never the cached CPU runs, whose keys the device does not change."""
    from benchmarks.bench_detection_accuracy import plain_key, plan

    settings = dict(data=tmp_path, weights="w.safetensors", model_name="test_efficientnet", image_size=64,
                    epochs=1)
    cpu_plain, _, _ = plan("plain", "plain", 0, settings)
    assert cpu_plain == plain_key(tmp_path, weights="w.safetensors", model_name="test_efficientnet",
                                  image_size=64, epochs=1, seed=0)
    assert plan("plain", "plain", 0, settings | {"device": "cuda"})[0] != cpu_plain
    cpu_lib, _, cpu_info = plan("defaults", [], 0, settings)
    gpu_lib, _, gpu_info = plan("defaults", [], 0, settings | {"device": "cuda"})
    assert cpu_lib != gpu_lib and cpu_info["overrides"] == []
    assert gpu_info["overrides"] == ["trainer=gpu", "data.num_workers=4"]
