"""Explanations (issue 28): class activation maps (``b4transfer.explain``), ``predict.explain=true`` writing
one overlay per image, the maps in ``errors.png``, and the sanity check: a model trained on images where
only a red square in the top-left quadrant decides the class looks at that square."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tests.conftest import TINY, compose_cfg

from b4transfer import tasks
from b4transfer.errors import NotSupportedError, UserError
from b4transfer.explain import METHODS, activation_map, input_view, overlay
from b4transfer.modes import run
from b4transfer.runtime.inference import output_names
from b4transfer.tasks.classification.explain import check_explainable, class_maps, explain_settings
from b4transfer.tasks.classification.module import ClassificationModule

SIZE, SIDE = 128, 25  # image side; the square's side
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


@pytest.mark.parametrize("method", METHODS)
def test_a_map_peaks_where_the_class_evidence_is(method):
    features = torch.zeros(1, 2, 4, 4)
    features[0, 0, 1, 2] = 3.0  # channel 0: evidence at (1, 2); channel 1: everywhere but against
    features[0, 1] = 1.0
    grads = torch.stack([torch.full((4, 4), 0.5), torch.full((4, 4), -0.2)])[None]
    cam = activation_map(features, grads, method)
    assert cam.shape == (1, 4, 4) and float(cam.max()) == pytest.approx(1.0)
    assert divmod(int(cam.argmax()), 4) == (1, 2)
    assert float(cam[0, 0, 0]) < 0.2  # where only the opposing channel is, (almost) nothing
    no_evidence = activation_map(features, -grads.abs(), method)  # every gradient against the class
    assert float(no_evidence.max()) == 0.0


def test_the_overlay_keeps_the_view_size_and_tints_where_the_map_is_high():
    view = input_view(torch.zeros(3, 40, 60), MEAN.tolist(), STD.tolist())  # the mean colour
    assert view.shape == (40, 60, 3) and view.dtype == np.uint8
    cam = torch.zeros(2, 3)
    cam[0, 0] = 1.0
    drawn = overlay(view, cam)
    assert drawn.shape == view.shape
    change = np.abs(drawn.astype(int) - view.astype(int)).sum(-1)
    assert change[:10, :10].mean() > 2 * change[30:, 40:].mean()  # low map: only a faint tint


def _square_images(n: int, seed: int):
    """Noisy grey images with a blue square anywhere; odd images also hold a red square in the top-left
    quadrant (class 1). Returns normalised images, classes and the red squares' corners."""
    rng = np.random.default_rng(seed)
    images, classes, corners = [], [], []
    for i in range(n):
        img = rng.normal(0.45, 0.12, size=(SIZE, SIZE, 3))
        bx, by = rng.integers(0, SIZE - SIDE, 2)
        img[by : by + SIDE, bx : bx + SIDE] = (0.15, 0.2, 0.85)  # a distractor in both classes
        corner = None
        if i % 2:
            x0, y0 = rng.integers(0, SIZE // 2 - SIDE, 2)
            img[y0 : y0 + SIDE, x0 : x0 + SIDE] = (0.9, 0.1, 0.1)
            corner = (int(x0), int(y0))
        images.append(torch.tensor(img.clip(0, 1), dtype=torch.float32).permute(2, 0, 1))
        classes.append(i % 2)
        corners.append(corner)
    x = (torch.stack(images) - MEAN[:, None, None]) / STD[:, None, None]
    return x, torch.tensor(classes), corners


def _pointing(module, x, corners, method: str) -> tuple[float, float]:
    """Share of the images whose map peaks on the red square (a margin of SIZE/10), and the mean share of
    the map's mass in the top-left quadrant."""
    maps, _, _ = class_maps(module, x, torch.ones(len(x), dtype=torch.long), method=method, stride=16)
    up = F.interpolate(maps[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    hits, mass, margin = [], [], SIZE // 10
    for heat, (x0, y0) in zip(up, corners):
        row, col = divmod(int(heat.argmax()), SIZE)
        hits.append(y0 - margin <= row < y0 + SIDE + margin and x0 - margin <= col < x0 + SIDE + margin)
        mass.append(float(heat[: SIZE // 2, : SIZE // 2].sum() / heat.sum().clamp(min=1e-7)))
    return float(np.mean(hits)), float(np.mean(mass))


def test_sanity_the_map_of_a_trained_model_peaks_on_the_square_that_decides_the_class():
    torch.manual_seed(0)
    x, y, _ = _square_images(256, seed=0)
    test_x, test_y, corners = _square_images(48, seed=1)
    positive = test_y == 1
    test_x, corners = test_x[positive], [c for c in corners if c is not None]
    module = ClassificationModule(
        class_names=["none", "square"],
        model={"name": "test_efficientnet"},
        data={"image_size": SIZE, "eval_image_size": SIZE, "crop_pct": 1.0, "eval_crop_pct": 1.0},
    )
    untrained = _pointing(module, test_x, corners, "layercam")
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    for _ in range(2):
        module.train()
        for batch in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(module(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    module.eval()
    with torch.no_grad():
        assert (module(test_x).argmax(-1) == 1).float().mean() > 0.95  # it learnt the task
    hits, mass = _pointing(module, test_x, corners, "layercam")
    assert hits >= 0.9 and mass >= 0.6, (hits, mass)  # measured 1.0 and 0.87; chance ~0.15 and 0.25
    # the check can fail: an untrained model's map spreads over the image (measured: 0.42 and 0.27)
    assert untrained[0] < 0.75 and untrained[1] < 0.45, untrained


def test_predict_explain_writes_one_overlay_per_image_and_errors_png_holds_the_maps(tmp_path, image_folder):
    base = (*TINY, "data=folder", f"data.root={image_folder}", "data.image_size=32")
    summary = run(compose_cfg(*base, f"run_dir={tmp_path / 'run'}"))
    assert summary["error_analysis"]["gallery_maps"] == {"method": "layercam", "stride": 16}
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    red = sorted((image_folder / "red").glob("*.png"))
    Image.open(red[0]).save(inputs / "x.png")
    Image.open(red[1]).save(inputs / "x.jpg")  # the same name but for the extension: two overlays
    Image.open(red[2]).save(inputs / "sub" / "x.png")
    out = run(compose_cfg(
        *base, "mode=predict", f"ckpt_path={summary['best_checkpoint']}", f"predict.input={inputs}",
        "predict.explain=true", "predict.explain_method=gradcam", f"run_dir={tmp_path / 'predict'}",
    ))
    paths = sorted(p for p in inputs.rglob("*") if p.is_file())
    expected = {(Path(out["explain"]["dir"]) / n) for n in output_names(paths, inputs)}
    written = set(Path(out["explain"]["dir"]).rglob("*.png"))
    assert written == expected and len(written) == 3 and out["explain"]["images"] == 3
    assert out["explain"]["method"] == "gradcam"
    side = json.loads((tmp_path / "run" / "export" / "config.json").read_text())["pretrained_cfg"]
    assert all(Image.open(p).size[0] == side["test_input_size"][-1] for p in written)
    assert Path(out["predictions"]).is_file()  # beside the predictions


def test_explain_refusals_name_the_key_and_the_fix():
    detection = compose_cfg("task=detection", "mode=predict", "predict.explain=true")
    with pytest.raises(NotSupportedError, match=r"task=detection does not support predict.explain=true"):
        tasks.get("detection").check_config(detection)  # what mode=predict asks a detection checkpoint's task
    with pytest.raises(UserError, match=r"explain_method='heat' is not .* gradcam, gradcampp, layercam"):
        explain_settings({"explain": True, "explain_method": "heat"})
    with pytest.raises(UserError, match=r"predict.explain_stride must be a backbone stride"):
        explain_settings({"explain": True, "explain_stride": "16px"})
    with pytest.raises(UserError, match=r"predict.explain must be true or false"):
        explain_settings({"explain": "yes"})
    cnn = ClassificationModule(class_names=["a", "b"], model={"name": "test_efficientnet"})
    with pytest.raises(UserError, match=r"explain_stride=64: .* strides \[2, 4, 8, 16, 32\]\. Fix: set"):
        check_explainable(cnn, 64)
    vit = ClassificationModule(class_names=["a", "b"], model={"name": "test_vit"})
    with pytest.raises(UserError, match=r"needs a convolutional feature map, .* Fix: set predict.explain=fa"):
        check_explainable(vit, 16)
