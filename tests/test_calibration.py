"""Calibration after training (issue 11): temperature scaling lowers the ECE of an over-confident model;
the temperature is stored in the checkpoint, config.json and the ONNX model, and predict applies it;
multi-label thresholds are F1-optimal per class; a task without the step refuses it up front."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer.data.images import load_rgb
from b4transfer.data.transforms import build_transforms
from b4transfer.errors import NotSupportedError
from b4transfer.modes import run
from b4transfer.modes.train import train
from b4transfer.tasks import load_module
from b4transfer.tasks.classification.calibration import ece, f1_thresholds, fit_temperature


def test_temperature_scaling_undoes_a_known_over_confidence():
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (20000,), generator=gen)
    honest = torch.randn(20000, 4, generator=gen) + 2.0 * torch.nn.functional.one_hot(targets, 4)
    labels = torch.multinomial(honest.softmax(-1), 1, generator=gen).squeeze(1)  # honest is calibrated
    temperature = fit_temperature(5.0 * honest, labels)  # five times too confident
    assert temperature == pytest.approx(5.0, rel=0.05)
    after, before = (5.0 * honest / temperature).softmax(-1), (5.0 * honest).softmax(-1)
    assert ece(after, labels) < 0.02 < 0.1 < ece(before, labels)


def test_f1_thresholds_pick_each_class_s_best_cut():
    probs = torch.tensor([[0.9, 0.30], [0.8, 0.25], [0.6, 0.20], [0.1, 0.05]])
    targets = torch.tensor([[1, 1], [1, 1], [0, 0], [0, 0]])
    th = f1_thresholds(probs, targets)
    assert 0.6 < th[0] <= 0.8 and 0.2 < th[1] <= 0.25


class OverConfident(L.Callback):
    """Multiplies the head by 30 before the (one) validation: the checkpoint is an over-confident model."""

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            with torch.no_grad():
                pl_module.head.fc.weight.mul_(30.0)
                pl_module.head.fc.bias.mul_(30.0)


def _random_labels(root: Path) -> Path:
    """The conftest colour images under labels drawn at random: no model can be right most of the time."""
    make_image_folder(root / "images", per_class=8, size=32)
    rng = np.random.default_rng(0)
    table = root / "labels.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for path in sorted((root / "images").rglob("*.png")):
            writer.writerow([path.relative_to(root), ["a", "b", "c"][rng.integers(3)]])
    return table


def test_an_over_confident_model_is_calibrated_and_predict_applies_the_temperature(tmp_path):
    """Must-show 3."""
    ort = pytest.importorskip("onnxruntime")
    from b4transfer.tasks.classification.onnx_export import onnx_metadata

    table = _random_labels(tmp_path)
    base = (*TINY, "data=csv", f"data.csv={table}", "data.image_size=32", "ema.enabled=false")
    summary = train(
        compose_cfg(*base, f"run_dir={tmp_path / 'run'}", "export.format=[timm,onnx]"),
        callbacks=[OverConfident()],
    )
    report = summary["calibration"]
    assert report["temperature"] > 2 and report["ece_after"] < report["ece_before"] - 0.1
    assert report["nll_after"] < report["nll_before"] and Path(report["reliability_diagram"]).is_file()
    best = summary["best_checkpoint"]
    module = load_module(best)
    temperature = module.hparams["calibration"]["temperature"]
    assert module.head.temperature == temperature == pytest.approx(report["temperature"], abs=1e-4)
    export = Path(summary["export_dir"])
    assert json.loads((export / "config.json").read_text())["calibration"] == {"temperature": temperature}
    assert onnx_metadata(export / "model.onnx")["calibration"] == {"temperature": temperature}
    # predict: the CSV's probabilities are softmax(logits / T), not the raw softmax
    red = sorted((tmp_path / "images" / "red").glob("*.png"))
    predict = ("mode=predict", f"ckpt_path={best}", f"predict.input={red[0].parent}", "predict.precision=32")
    out = run(compose_cfg(*base, *predict, "predict.check_agreement=0", f"run_dir={tmp_path / 'predict'}"))
    assert out["calibration_applied"] == {"temperature": temperature}
    with open(out["predictions"]) as f:
        got = {row["path"]: float(row["prob1"]) for row in csv.DictReader(f)}
    _, eval_tf = build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])
    x = torch.stack([eval_tf(load_rgb(p)) for p in red])
    with torch.no_grad():
        logits = module.head(module.backbone(x))
    calibrated, raw = (logits / temperature).softmax(-1).max(-1).values, logits.softmax(-1).max(-1).values
    csv_probs = torch.tensor([got[str(p)] for p in red])
    assert torch.allclose(csv_probs, calibrated, atol=1e-4) and not torch.allclose(csv_probs, raw, atol=1e-2)
    # the ONNX model's probabilities output applies the same temperature
    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits, onnx_probs = session.run(["logits", "probabilities"], {"image": x.numpy()})
    expected = torch.from_numpy(onnx_logits).div(temperature).softmax(-1).numpy()
    assert np.abs(onnx_probs - expected).max() < 1e-5


def test_a_task_without_calibration_refuses_it_up_front(tmp_path):
    cfg = compose_cfg(*TINY, "task=segmentation", "calibrate.enabled=true", f"run_dir={tmp_path / 'seg'}")
    match = r"task=segmentation does not support calibrate\.enabled=true; it supports "
    with pytest.raises(NotSupportedError, match=match + r"calibrate\.enabled=false \(its steps: none\)\."):
        run(cfg)
    assert not (tmp_path / "seg" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------- detection
def test_detection_thresholds_maximise_each_class_s_f1():
    from b4transfer.tasks.detection.calibration import best_thresholds, match

    target = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 1])}
    pred = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]]),
        "scores": torch.tensor([0.9, 0.8, 0.6, 0.2]),
        "labels": torch.tensor([0, 0, 0, 1]),
    }
    tp = match(pred, target)
    assert tp.tolist() == [True, False, False, True]  # the duplicate and the stray box are false positives
    th = best_thresholds(
        pred["scores"], tp, pred["labels"], torch.tensor([1, 1, 0]), num_classes=3, default=0.3
    )
    assert th == [pytest.approx(0.9), pytest.approx(0.2), 0.3]  # class 2: no ground truth -> the default


def test_a_detector_gets_per_class_score_thresholds_that_predict_applies(tmp_path):
    det = (
        *TINY,
        "task=detection",
        "data.source.image_size=64",
        "data.source.train_images=8",
        "data.source.val_images=4",
        "data.image_size=64",
        "head.fpn_channels=32",
        "trainer.limit_train_batches=2",
        "ema.enabled=false",
        "optim.lr=0.01",
        "head.score_thresh=0.01",
        f"data.source.root={tmp_path / 'demo'}",
    )
    summary = run(compose_cfg(*det, f"run_dir={tmp_path / 'run'}"))
    chosen = summary["calibration"]["score_thresholds"]
    assert set(chosen) == set(summary["class_names"]) and all(0 <= t <= 1 for t in chosen.values())
    module = load_module(summary["best_checkpoint"])
    assert module.hparams["calibration"] == {"score_thresholds": chosen}
    images = tmp_path / "demo" / "val"
    out = run(
        compose_cfg(
            *det,
            "mode=predict",
            f"ckpt_path={summary['best_checkpoint']}",
            f"predict.input={images}",
            "predict.draw=true",
            "predict.check_agreement=0",
            f"run_dir={tmp_path / 'predict'}",
        )
    )
    assert out["score_thresholds"] == chosen and out["calibration_applied"] == {"score_thresholds": chosen}
    assert out["detections_kept"] <= out["detections"] and Path(out["drawn"]).is_dir()


def test_multi_label_thresholds_are_stored_and_predict_applies_them(tmp_path):
    make_image_folder(tmp_path / "images", per_class=6, size=32)
    table = tmp_path / "tags.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for path in sorted((tmp_path / "images").rglob("*.png")):
            writer.writerow(
                [path.relative_to(tmp_path), f"{path.parent.name} {'odd' if int(path.stem) % 2 else 'even'}"]
            )
    base = (*TINY, "data=csv", f"data.csv={table}", "data.multi_label=true", "data.image_size=32")
    summary = run(compose_cfg(*base, f"run_dir={tmp_path / 'run'}"))
    thresholds = summary["calibration"]["thresholds"]
    assert (
        set(thresholds) == {"blue", "even", "green", "odd", "red"}
        and "f1_macro_tuned" in summary["calibration"]
    )
    assert summary["calibration"]["f1_macro_tuned"] >= summary["calibration"]["f1_macro_at_0.5"]
    module = load_module(summary["best_checkpoint"])
    assert module.head.thresholds == list(thresholds.values())
    out = run(
        compose_cfg(
            *base,
            "mode=predict",
            f"ckpt_path={summary['best_checkpoint']}",
            "predict.top_k=5",
            f"predict.input={tmp_path / 'images' / 'red'}",
            "predict.precision=32",
            "predict.check_agreement=0",
            f"run_dir={tmp_path / 'predict'}",
        )
    )
    with open(out["predictions"]) as f:
        for row in csv.DictReader(f):
            probs = {row[f"label{r}"]: float(row[f"prob{r}"]) for r in range(1, 6)}
            on = {name for name, p in probs.items() if p >= thresholds[name] - 1e-6}
            assert set(row["labels"].split()) == on, row
