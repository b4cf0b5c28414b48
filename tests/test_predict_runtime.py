"""``predict.runtime`` (issue 29): auto picks the fastest runtime that agrees with fp32 PyTorch, passes over
a missing package or a disagreeing runtime with the reason in summary.json, keeps the exports beside the
checkpoint and reuses them; explicit runtimes that cannot run are refused up front; torch is unchanged;
validate/test score through the chosen runtime."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer.errors import MissingDependencyError, NotSupportedError, UserError
from b4transfer.modes import run, train
from b4transfer.runtime import choice as runtime_choice
from b4transfer.runtime.cache import MARKER_NAME, RuntimeCache
from b4transfer.tasks import get

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
EXPORTED = ("onnxruntime", "openvino", "onnx_int8")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runtime")
    images = make_image_folder(tmp / "images", per_class=6, size=32)
    cfg = compose_cfg(*TINY, "data=folder", f"data.root={images}", f"run_dir={tmp / 'train'}",
                      "data.image_size=32", "checkpoint.monitor=null", "optim.lr=0.01")
    return tmp, images, train(cfg)["last_checkpoint"]


def _cfg(trained, name, *overrides):
    tmp, images, ckpt = trained
    return compose_cfg(*TINY, "data=folder", f"data.root={images}", "data.image_size=32", f"ckpt_path={ckpt}",
                       f"run_dir={tmp / name}", "mode=predict", f"predict.input={images}",
                       "export.int8_calibration_images=8", *overrides)


def _predictions(summary) -> dict[str, tuple[str, float]]:
    with open(summary["predictions"], newline="") as f:
        return {r["path"]: (r["label1"], float(r["prob1"])) for r in csv.DictReader(f)}


def _choice_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "b4transfer.runtime.choice"]


def test_auto_runs_the_fastest_agreeing_runtime_and_reuses_the_exports(trained, caplog):
    exact = run(_cfg(trained, "fp32", "predict.precision=32", "predict.channels_last=false"))
    assert exact["runtime"] == {"requested": "torch", "used": "torch", "reason": "predict.runtime=torch"}
    assert not (Path(trained[2]).parent / "runtimes").exists()  # torch (the default) builds nothing
    with caplog.at_level(logging.INFO):
        auto = run(_cfg(trained, "auto", "predict.runtime=auto", "predict.check_agreement=8"))
    report = auto["runtime"]
    assert report["requested"] == "auto" and report["sample_images"] == 8 and report["fallbacks"] == {}
    assert set(report["candidates"]) == {*EXPORTED, "torch"}
    speeds = {r: e["images_per_s"] for r, e in report["candidates"].items()}
    agreeing = [r for r, e in report["candidates"].items() if e["agrees"]]
    assert report["used"] == max(agreeing, key=speeds.get) and report["used"] in report["reason"]
    for runtime in ("onnxruntime", "openvino"):  # fp32 runtimes: the same top-1 as PyTorch on the sample
        assert report["candidates"][runtime]["agreement"]["top1_agreement"] == 1.0
    assert auto["inference"]["runtime"] == report["used"] and len(_choice_lines(caplog)) == 1
    got, ref = _predictions(auto), _predictions(exact)
    labels = [got[p][0] == ref[p][0] for p in ref]
    assert np.mean(labels) >= 0.99 and max(abs(got[p][1] - ref[p][1]) for p in ref) < 0.05
    # the exports sit beside the checkpoint, keyed by its hash and the image size, and are reused
    cache = trained[2].rsplit("/", 1)[0] + "/runtimes/last"
    marker = json.loads((Path(report["cache"]) / MARKER_NAME).read_text())
    assert report["cache"].startswith(cache) and report["cache"].endswith("-32px")
    assert set(marker["built"]) == {"onnx", "openvino", "onnx_int8"} and marker["image_size"] == 32
    again = run(_cfg(trained, "again", "predict.runtime=auto", "predict.check_agreement=8"))
    assert all(again["runtime"]["candidates"][r]["reused"] for r in EXPORTED)


def test_auto_passes_over_missing_packages(trained, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    summary = run(_cfg(trained, "no_ov", "predict.runtime=auto", "predict.check_agreement=4"))
    report = summary["runtime"]
    assert "openvino package is not installed" in report["fallbacks"]["openvino"]
    assert "openvino" not in report["candidates"] and report["used"] in ("onnxruntime", "onnx_int8", "torch")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level(logging.INFO):
        summary = run(_cfg(trained, "no_ort", "predict.runtime=auto"))
    report = summary["runtime"]
    assert report["used"] == "torch" and report["candidates"] == {}
    assert all("onnxruntime package is not installed" in report["fallbacks"][r] for r in ("onnxruntime",
                                                                                         "onnx_int8"))
    lines = _choice_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("predict.runtime=auto: torch runs, no exported runtime")
    assert summary["inference"]["runtime"] == "torch" and summary["inference"]["precision"] in ("32", "bf16")


def _shifted(runtime_choice_open):
    """``open_runtime`` whose onnxruntime model gives every image's logits shifted by one class."""

    def open_runtime(fmt, folder, threads=None):
        run_it = runtime_choice_open(fmt, folder, threads=threads)
        if fmt != "onnx":
            return run_it
        return lambda inputs: [np.roll(out, 1, axis=1) for out in run_it(inputs)]

    return open_runtime


def test_auto_passes_over_a_runtime_that_disagrees(trained, monkeypatch):
    monkeypatch.setattr(runtime_choice, "open_runtime", _shifted(runtime_choice.open_runtime))
    report = run(_cfg(trained, "disagree", "predict.runtime=auto", "predict.check_agreement=18"))["runtime"]
    onnx = report["candidates"]["onnxruntime"]
    assert not onnx["agrees"] and onnx["agreement"]["top1_agreement"] < 0.99
    assert report["fallbacks"]["onnxruntime"].startswith("disagrees with fp32 PyTorch: ")
    assert report["used"] != "onnxruntime" and report["candidates"][report["used"]]["agrees"]


def test_an_explicit_runtime_runs_as_asked_and_validate_scores_through_it(trained, monkeypatch, caplog):
    predicted = run(_cfg(trained, "ort", "predict.runtime=onnxruntime"))
    assert predicted["runtime"]["used"] == predicted["inference"]["runtime"] == "onnxruntime"
    assert set(predicted["runtime"]["candidates"]) == {"onnxruntime"}  # only what was asked: nothing timed
    assert predicted["inference"]["agreement_vs_fp32"]["top1_agreement"] == 1.0
    scores = {}
    for runtime in ("torch", "onnxruntime"):
        summary = run(_cfg(trained, f"val_{runtime}", "mode=validate", f"predict.runtime={runtime}"))
        scores[runtime] = summary["metrics"]["val/acc1"]
        assert (summary.get("runtime") or {}).get("used", "torch") == runtime
    assert scores["onnxruntime"] == pytest.approx(scores["torch"])
    # the metrics really come from the runtime: shifted logits score differently, and say so
    monkeypatch.setattr(runtime_choice, "open_runtime", _shifted(runtime_choice.open_runtime))
    with caplog.at_level(logging.WARNING):
        wrong = run(_cfg(trained, "val_wrong", "mode=validate", "predict.runtime=onnxruntime"))
    assert wrong["metrics"]["val/acc1"] != pytest.approx(scores["torch"])
    assert any("agrees with fp32 PyTorch on only" in m for m in _choice_lines(caplog))


def test_runtimes_that_cannot_run_are_refused_up_front(monkeypatch):
    cls, seg = get("classification"), get("segmentation")

    def cfg(*overrides):
        return compose_cfg(*TINY, "mode=predict", *overrides)

    assert runtime_choice.check_runtime(cfg(), cls) == "torch"
    with pytest.raises(UserError, match=r"predict.runtime='tensorrt' is not a runtime; use one of auto, "):
        runtime_choice.check_runtime(cfg("predict.runtime=tensorrt"), cls)
    with pytest.raises(NotSupportedError, match=r"predict.runtime=openvino cannot run this job: "
                       r"task=segmentation has no openvino export \(its exported runtimes: onnxruntime\)"):
        runtime_choice.check_runtime(cfg("task=segmentation", "predict.runtime=openvino"), seg)
    with pytest.raises(NotSupportedError, match=r"tta=hflip: the exported model has no test-time augment"):
        runtime_choice.check_runtime(cfg("predict.runtime=onnxruntime", "tta=hflip"), cls)
    with pytest.raises(NotSupportedError, match=r"mode=embed: the exported model gives the task's outputs"):
        runtime_choice.check_runtime(compose_cfg(*TINY, "mode=embed", "predict.runtime=onnx_int8"), cls)
    with pytest.raises(UserError, match=r"predict.runtime=auto needs predict.check_agreement >= 1"):
        runtime_choice.check_runtime(cfg("predict.runtime=auto", "predict.check_agreement=0"), cls)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"predict.runtime=openvino needs onnx, onnxruntime, "
                       r"openvino: the openvino package is not installed .*"
                       r"pip install \"b4transfer\[openvino\]\""):
        runtime_choice.check_runtime(cfg("predict.runtime=openvino"), cls)
    assert runtime_choice.check_runtime(cfg("predict.runtime=auto"), seg) == "auto"  # auto never refuses
    gpu = runtime_choice.cannot_run("onnxruntime", cls, cfg("predict.runtime=auto"), device="cuda")
    assert gpu == "the exported runtimes run on the CPU and this run has a GPU"  # auto keeps torch there


def test_embed_with_auto_falls_back_to_torch_in_one_line(trained, caplog):
    with caplog.at_level(logging.INFO):
        summary = run(_cfg(trained, "embed", "mode=embed", "predict.runtime=auto"))
    assert summary["shape"][0] == 18
    lines = _choice_lines(caplog)
    assert len(lines) == 1 and "torch runs" in lines[0] and "mode=embed" in lines[0]


def _entry(speed, share):
    return {"images_per_s": speed, "agreement": {"agreement": share}, "agrees": share >= 0.99}


def test_the_choice_is_the_fastest_agreeing_runtime_and_torch_is_the_last_resort():
    report = {"requested": "auto", "sample_images": 16, "fallbacks": {}, "candidates": {
        "onnx_int8": _entry(90.0, 0.9375), "openvino": _entry(40.0, 1.0), "onnxruntime": _entry(30.0, 1.0),
        "torch": _entry(20.0, 1.0)}}
    choice = runtime_choice._pick(report, {"openvino": "run", "onnxruntime": "run"}, adapter=None)
    assert choice.name == "openvino" and choice.run == "run" and report["used"] == "openvino"
    assert report["fallbacks"] == {"onnx_int8": "disagrees with fp32 PyTorch: 0.9375 < 0.99 on 16 images"}
    assert "openvino 40.0, onnxruntime 30.0, torch 20.0" in report["reason"]
    report = {"requested": "auto", "sample_images": 4, "fallbacks": {}, "candidates": {
        "onnxruntime": _entry(30.0, 0.5), "torch": _entry(20.0, 0.75)}}
    choice = runtime_choice._pick(report, {"onnxruntime": "run"}, adapter=None)
    assert choice.name == "torch" and not choice.exported and set(report["fallbacks"]) == {"onnxruntime"}


def test_the_cache_never_writes_into_a_folder_it_did_not_make(tmp_path):
    ckpt = tmp_path / "ckpts" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    cache = RuntimeCache.beside(ckpt, 32, tmp_path / "run")
    assert cache.note is None and cache.folder.parent == ckpt.parent / "runtimes" / "best"
    theirs = cache.folder.parent / f"{cache.folder.name}"
    (cache.folder / MARKER_NAME).unlink()
    (theirs / "model.onnx").write_bytes(b"not ours")
    other = RuntimeCache.beside(ckpt, 32, tmp_path / "run")
    assert other.folder == tmp_path / "run" / "runtimes" / cache.folder.name and "did not write" in other.note
    assert (theirs / "model.onnx").read_bytes() == b"not ours"
    ckpt.write_bytes(b"retrained weights")  # another checkpoint under the same name: another folder
    assert RuntimeCache.beside(ckpt, 32, tmp_path / "run2").folder.name != cache.folder.name


def test_openvino_s_uninitialised_detection_is_dropped():
    from b4transfer.tasks.detection.runtime import plausible

    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [-2.9e20, 4.6e-41, -2.9e20, 4.6e-41], [0, 0, 0, 0],
                          [1.0, 1.0, 70.0, 5.0]])
    scores = torch.tensor([0.7, -2.9e20, 0.0, 0.6])
    assert plausible(boxes, scores, size=64, score_thresh=0.05).tolist() == [True, False, False, False]


def test_the_uint8_prediction_input_equals_the_float_transform_exactly():
    from timm.data import create_transform

    from b4transfer.data.transforms import normalize_uint8, uint8_eval_transform

    cfg = {"input_size": (3, 48, 48), "interpolation": "bicubic", "crop_pct": 0.875,
           "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (61, 75, 3), dtype=np.uint8))
    small = uint8_eval_transform(cfg)(image)
    assert small.dtype == torch.uint8 and small.shape == (3, 48, 48)
    normalised = normalize_uint8(small[None], cfg["mean"], cfg["std"])[0]
    assert torch.equal(normalised, create_transform(**cfg)(image))


def test_a_segmenter_predicts_and_validates_through_onnxruntime(tmp_path):
    seg = ("task=segmentation", "data.source.image_size=64", "data.source.train_images=6",
           "data.source.val_images=4", "data.image_size=64", "head.fpn_channels=16", "head.seg_channels=16",
           f"data.source.root={tmp_path / 'demo'}", "predict.check_agreement=4")

    def cfg(name, *overrides):
        return compose_cfg(*TINY, *seg, f"run_dir={tmp_path / name}", *overrides)

    ckpt = train(cfg("train", "checkpoint.monitor=null"))["last_checkpoint"]
    images = tmp_path / "demo" / "images" / "val"
    masks = {}
    for runtime in ("torch", "onnxruntime"):
        summary = run(cfg(runtime, "mode=predict", f"ckpt_path={ckpt}", f"predict.input={images}",
                          f"predict.runtime={runtime}", "predict.precision=32"))
        assert summary["runtime"]["used"] == summary["inference"]["runtime"] == runtime
        found = Path(summary["masks_dir"]).rglob("*.png")
        masks[runtime] = {q.name: np.asarray(Image.open(q)) for q in found}
    assert masks["torch"].keys() == masks["onnxruntime"].keys() and len(masks["torch"]) == 4
    same = np.mean([np.mean(masks["torch"][k] == masks["onnxruntime"][k]) for k in masks["torch"]])
    assert same >= 0.999
    scores = {r: run(cfg(f"val_{r}", "mode=validate", f"ckpt_path={ckpt}", f"predict.runtime={r}"))["metrics"]
              for r in ("torch", "onnxruntime")}
    assert scores["onnxruntime"]["val/miou"] == pytest.approx(scores["torch"]["val/miou"], abs=1e-3)
