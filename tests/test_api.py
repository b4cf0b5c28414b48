"""The Python API (issue 26): the command line's keys, composition and one-line errors from Python; no
global Hydra state or change of directory left behind; typed results in memory; the quickstart example
run twice in one process (must-shows 1 and 2)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image
from tests.conftest import TINY, make_image_folder

import b4transfer as b4
from b4transfer import modes
from b4transfer.compose import compose_config, to_overrides
from b4transfer.errors import UserError, UserFileNotFoundError, UserTypeError

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "B4TRANSFER_CACHE": str(cwd / "cache"), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _no_hydra_state() -> bool:
    return not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()


@pytest.fixture
def captured(monkeypatch):
    """``modes.run`` replaced by a recorder: the config an API call would run, and no run."""
    configs = []
    monkeypatch.setattr(modes, "run", lambda cfg: configs.append(cfg) or {"mode": cfg.mode})
    return configs


# ------------------------------------------------------------- must-show 2: the CLI's config and errors
@pytest.mark.parametrize("task, data, rest", [
    # +key: a new key where one is taken (trainer: Lightning's; b4transfer.settings refuses one elsewhere)
    ("classification", "folder",
     ["data.root=ROOT", "finetune=gradual", "optim.lr=3e-4", "+trainer.max_steps=9"]),
    ("detection", "demo_detection", ["data.source.root=ROOT", "head.fpn_channels=32", "seed=7"]),
])
def test_b4_train_composes_the_config_python_run_py_composes(task, data, rest, captured, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    rest = [r.replace("ROOT", str(tmp_path / "images")) for r in rest]
    overrides = ["model=test_efficientnet", "trainer.max_epochs=3", *rest]
    run = b4.train(task=task, data=data, overrides=overrides)
    proc = cli(f"task={task}", f"data={data}", *overrides, "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_cli = yaml.safe_load(proc.stdout)  # as composed: interpolations such as ${run_dir} unresolved
    from_api = OmegaConf.to_container(captured[0], resolve=False)
    assert from_cli.pop("run_dir") == "${hydra:runtime.output_dir}"  # Hydra's run directory ...
    assert from_api.pop("run_dir") == str(run.run_dir)  # ... which the API makes as Hydra would
    assert from_api == from_cli
    resolved = OmegaConf.to_container(captured[0], resolve=True)
    assert resolved["logger"]["csv"]["save_dir"] == str(run.run_dir)
    assert resolved["task"] == task and resolved["model"]["name"] == "test_efficientnet"
    # the CLI's default run directory (outputs/<date>/<time>, here under the working directory)
    assert run.run_dir.parent.parent == tmp_path / "outputs" and not run.run_dir.exists()
    assert os.getcwd() == str(tmp_path) and _no_hydra_state()


@pytest.mark.parametrize("bad", [
    ["trainer.max_epoch=3"],                          # a mistyped key: the closest keys
    ["finetune=gradul", "data.rot=/x"],               # a mistyped group choice and key, told together
    ["optim=adamw", "model.drop_rate=0.1", "modle.name=x"],
])
def test_a_bad_key_gives_the_same_one_line_error_through_both(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        b4.train(overrides=bad)
    message = str(err.value)
    assert "\n" not in message and ("Fix:" in message or "choose one of" in message)
    proc = cli(*bad, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"b4transfer: error: {message}"]
    assert not (tmp_path / "outputs").exists() and _no_hydra_state()


def test_a_refused_run_tells_the_same_error_and_leaves_no_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, "data=folder", f"data.root={tmp_path / 'missing'}"]
    with pytest.raises(UserError) as err:
        b4.train(overrides=overrides)
    assert str(tmp_path / "missing") in str(err.value)
    assert not (tmp_path / "outputs").exists(), "the API removes the run directory of a refused run"
    proc = cli(*overrides, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"b4transfer: error: {err.value}" in proc.stderr.splitlines()
    assert not (tmp_path / "outputs").exists()


def test_overrides_as_a_dict_are_written_in_hydra_syntax(tmp_path):
    overrides = {
        "data": "folder", "data.root": tmp_path / "a folder, with 'quotes'", "trainer.max_epochs": 2,
        "ckpt_path": None, "data.mean": [0.5, 0.25, 0.125], "model.pretrained": False,
        "export.format": ("timm", "onnx"), "push.commit_message": "true",
    }
    cfg = compose_config(to_overrides(overrides), run_dir=tmp_path / "run")
    assert cfg.data.root == str(tmp_path / "a folder, with 'quotes'")
    assert cfg.trainer.max_epochs == 2 and cfg.ckpt_path is None and cfg.model.pretrained is False
    assert list(cfg.data.mean) == [0.5, 0.25, 0.125] and list(cfg.export.format) == ["timm", "onnx"]
    assert cfg.push.commit_message == "true" and cfg.run_dir == str(tmp_path / "run")
    # hydra.run.dir, as on the command line, is where the run writes (relative: to the working directory)
    assert compose_config(["hydra.run.dir=runs/a"]).run_dir == os.path.abspath("runs/a")
    assert compose_config(["run_dir=elsewhere"]).run_dir == "elsewhere"
    assert _no_hydra_state()


def test_what_the_command_line_does_differently_is_refused_with_the_fix(captured):
    with pytest.raises(UserError, match=r"optim.lr=1e-3,3e-4: a sweep .* runs one job per value with the "
                                        r"command line's -m; in Python, loop over the values"):
        b4.train(overrides=["optim.lr=1e-3,3e-4"])
    with pytest.raises(UserTypeError, match=r"overrides='trainer.max_epochs=2' is one string; pass a list"):
        b4.train(overrides="trainer.max_epochs=2")
    with pytest.raises(UserError, match=r"Error parsing override 'data.root=\[oops'"):
        b4.train(overrides=["data.root=[oops"])
    assert not captured and _no_hydra_state()


def test_build_gives_the_lightning_objects_of_a_training_run(tmp_path, image_folder):
    parts = b4.build(data="folder", overrides=[*TINY, f"data.root={image_folder}"], run_dir=tmp_path / "run")
    assert parts.module.class_names == ["blue", "green", "red"] and parts.trainer.max_epochs == 1
    assert (tmp_path / "run" / "config_resolved.yaml").is_file() and parts.run_dir == tmp_path / "run"
    before = parts.module.head.fc.weight.detach().clone()
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert not torch.equal(before, parts.module.head.fc.weight) and parts.trainer.current_epoch == 1
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file() and _no_hydra_state()


# ------------------------------------------------------------------------ a trained model in memory
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    images = make_image_folder(tmp / "images")
    overrides = [*TINY, f"data.root={images}", "optim.lr=0.01"]
    run = b4.train(data="folder", overrides=overrides, run_dir=tmp / "run")
    return run, images


def test_a_run_and_its_model_from_a_checkpoint_an_export_or_the_run_directory(trained):
    run, images = trained
    assert run.mode == "train" and 0 <= run.metrics["val/acc1"] <= 1 and run.summary["task"]
    assert run.best_checkpoint.is_file() and run.last_checkpoint.is_file()
    assert {"config.json", "model.safetensors", "backbone"} <= {p.name for p in run.export_dir.iterdir()}
    for source in (run.best_checkpoint, run.export_dir, run.run_dir):
        assert b4.load(source).checkpoint == run.best_checkpoint
    model = b4.load(run.export_dir)
    assert model.class_names == ["blue", "green", "red"] and model.module.training is False


def test_predict_gives_typed_results_for_files_pil_images_and_arrays(trained):
    run, images = trained
    model = b4.load(run.best_checkpoint)
    path = images / "red" / "003.png"
    by_path, by_pil, by_array = model.predict([path, Image.open(path), np.asarray(Image.open(path))])
    assert by_path == by_pil == by_array
    assert by_path.label in model.class_names and by_path.labels == (by_path.label,)
    assert sum(by_path.probs.values()) == pytest.approx(1, abs=1e-5)
    assert by_path.score == max(by_path.probs.values()) and by_path.top(1) == [(by_path.label, by_path.score)]
    # the same numbers as mode=predict writes to predictions.csv
    predicted = b4.predict(run.best_checkpoint, input=path, overrides=["predict.precision=32", *TINY],
                           run_dir=run.run_dir.parent / "predict")
    row = (Path(predicted.summary["predictions"]).read_text().splitlines()[1]).split(",")
    assert row[1] == by_path.label and float(row[2]) == pytest.approx(by_path.score, abs=1e-5)
    flipped = model.predict(path, tta="hflip")[0]
    assert flipped.label in model.class_names and model.module.tta is None


def test_an_export_without_its_checkpoint_still_loads_and_predicts_the_same(trained, tmp_path):
    run, images = trained
    shipped = tmp_path / "downloaded"  # an export copied elsewhere: the checkpoint it names is not here
    shutil.copytree(run.export_dir, shipped)
    config = json.loads((shipped / "config.json").read_text())
    (shipped / "config.json").write_text(json.dumps({**config, "checkpoint": "/elsewhere/best.ckpt"}))
    alone, original = b4.load(shipped), b4.load(run.best_checkpoint)
    assert alone.checkpoint is None and alone.class_names == original.class_names
    assert alone.module.data_config == original.module.data_config
    paths = [images / "red" / "001.png", images / "blue" / "002.png"]
    for mine, theirs in zip(alone.predict(paths), original.predict(paths)):
        assert mine.label == theirs.label and mine.probs == pytest.approx(theirs.probs, abs=1e-6)
    with pytest.raises(UserError, match=r"mode=validate runs on a checkpoint, and this model was rebuilt "
                                        r"from an export without one. Fix: b4.load\("):
        alone.validate(data="folder")


def test_predict_refuses_what_it_cannot_read_naming_it(trained, tmp_path):
    model = b4.load(trained[0].best_checkpoint)
    with pytest.raises(UserFileNotFoundError, match=r"image '.*nothing.png' does not exist"):
        model.predict([tmp_path / "nothing.png"])
    with pytest.raises(UserTypeError, match=r"cannot predict on ndarray \(4, 4\)"):
        model.predict(np.zeros((4, 4)))
    with pytest.raises(UserError, match=r"does not support tta=flip; it supports hflip, hflip_scales"):
        model.predict(trained[1] / "red" / "000.png", tta="flip")
    with pytest.raises(UserError, match=r"holds no checkpoint b4transfer can load.*b4.load_backbone\(path\)"):
        b4.load(tmp_path)


# ------------------------------------------------------------------ must-show 1: the quickstart twice
@pytest.mark.slow
def test_the_quickstart_runs_twice_in_one_process_and_leaves_the_working_directory(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    first, second = quickstart.main(tmp_path / "first"), quickstart.main(tmp_path / "second")
    assert os.getcwd() == str(cwd) and list(cwd.iterdir()) == [] and _no_hydra_state()
    for out in (first, second):
        assert len(out["labels"]) == 3 and set(out["labels"]) <= set(quickstart.COLOURS)
        validated = out["validate"].metrics["val/acc1"]
        assert validated == pytest.approx(out["train"].summary["best_score"]), "the best checkpoint's score"
        assert (out["export"].export_dir / "model.onnx").is_file()
        assert out["feature_shapes"][-1] == (1, 64, 2, 2) and out["out_channels"] == 256
    # the second run in the same process is the first again: same seed, same data, nothing left over
    def scores(out):
        return {k: v for k, v in out["train"].metrics.items() if not k.startswith("time/")}

    assert first["labels"] == second["labels"] and scores(first) == pytest.approx(scores(second), abs=1e-5)


# ------------------------------------------------- detection and segmentation results, as mode=predict
def _odd_sized_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate([(50, 70), (97, 40)]):
        pixels = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def test_detections_in_memory_are_the_boxes_mode_predict_writes(tmp_path):
    demo = ["data.source.image_size=64", "data.source.train_images=8", "data.source.val_images=4",
            f"data.source.root={tmp_path / 'demo'}"]
    overrides = [*TINY, *demo, "head.fpn_channels=32", "head.score_thresh=0.0", "export.parity=false"]
    run = b4.train(task="detection", overrides=overrides, run_dir=tmp_path / "run")
    paths = _odd_sized_images(tmp_path / "new")
    model = b4.load(run.run_dir)
    found = model.predict(paths)
    assert model.task == "detection" and [type(d).__name__ for d in found] == ["Detections"] * 2
    written = b4.predict(run.best_checkpoint, input=tmp_path / "new", run_dir=tmp_path / "predict",
                         overrides=["predict.precision=32", "data.num_workers=0"])
    rows = json.loads((written.run_dir / "detections.json").read_text())
    for index, det in enumerate(found):
        mine = [r for r in rows if r["image_id"] == index + 1]  # mode=predict numbers the images from 1
        assert len(det) == len(mine) > 0 and det.labels == [model.class_names[i] for i in det.label_ids]
        x1, y1, x2, y2 = det.boxes[0].tolist()
        assert mine[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)
        assert float(det.boxes[:, 2].max()) <= (50, 97)[index] + 1e-3  # in the original image's pixels
        confident = det.confident()
        assert all(s >= det.score_thresholds[n] for s, n in zip(confident.scores, confident.labels))


def test_segmentation_masks_in_memory_are_the_masks_mode_predict_writes(tmp_path):
    seg = ["data.source.image_size=64", "data.source.train_images=8", "data.source.val_images=4",
           "data.image_size=64", "head.fpn_channels=16", "head.seg_channels=16"]
    run = b4.train(task="segmentation", overrides=[*TINY, *seg, f"data.source.root={tmp_path / 'demo'}",
                                                   "export.parity=false"], run_dir=tmp_path / "run")
    paths = _odd_sized_images(tmp_path / "new")
    found = b4.load(run.best_checkpoint).predict([Image.open(p) for p in paths])
    fp32_eager = ["predict.precision=32", "predict.channels_last=false", "data.num_workers=0"]
    written = b4.predict(run.best_checkpoint, input=tmp_path / "new", run_dir=tmp_path / "predict",
                         overrides=fp32_eager)
    for path, result in zip(paths, found):
        mask = np.asarray(Image.open(Path(written.summary["masks_dir"]) / path.name))
        assert result.mask.shape == mask.shape == Image.open(path).size[::-1]
        assert np.array_equal(result.mask, mask)
        assert sum(result.shares().values()) == pytest.approx(1)
        assert result.colourized().size == Image.open(path).size
