"""Fast inference (bf16 autocast + channels_last) and ONNX export agree with fp32 eager outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from tests.conftest import TINY, compose_cfg, make_image_folder

from b4transfer.data.images import load_rgb
from b4transfer.data.transforms import build_transforms
from b4transfer.modes import run, train
from b4transfer.runtime.inference import InferenceSettings, fast_model, resolve_precision
from b4transfer.tasks import load_module
from b4transfer.tasks.classification import ClassificationModule
from b4transfer.tasks.detection import DetectionModule

# Stated tolerances: bf16 autocast keeps top-1 on >= 99 % of images and moves no probability by
# more than 0.02; ONNX (fp32 onnxruntime) matches PyTorch logits to 1e-4.
MIN_TOP1_AGREEMENT, MAX_PROB_DIFF, ONNX_ATOL = 0.99, 0.02, 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny classifier trained for 2 epochs (confident enough that top-1 is meaningful)."""
    tmp = tmp_path_factory.mktemp("fast")
    images = make_image_folder(tmp / "images", per_class=12)
    cfg = compose_cfg(
        *TINY, "data=folder", f"data.root={images}", f"run_dir={tmp / 'train'}", "trainer.max_epochs=2",
        "optim.lr=0.01", "checkpoint.monitor=null",
    )
    summary = train(cfg)
    return tmp, images, summary["last_checkpoint"]


def _cfg(tmp, images, ckpt, name, *overrides):
    return compose_cfg(
        *TINY, "data=folder", f"data.root={images}", f"run_dir={tmp / name}", f"ckpt_path={ckpt}", *overrides
    )


def _probs(run_dir) -> dict[str, dict[str, float]]:
    with open(run_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["path"]: {r[f"label{i}"]: float(r[f"prob{i}"]) for i in (1, 2, 3)} for r in rows}


def test_bf16_channels_last_predictions_agree_with_fp32_eager(trained):
    tmp, images, ckpt = trained
    fast = run(_cfg(tmp, images, ckpt, "fast", "mode=predict", f"predict.input={images}",
                    "predict.precision=bf16", "predict.check_agreement=64"))
    exact = run(_cfg(tmp, images, ckpt, "fp32", "mode=predict", f"predict.input={images}",
                     "predict.precision=32", "predict.channels_last=false"))
    assert fast["inference"]["precision"] == "bf16" and fast["inference"]["channels_last"]
    assert exact["inference"]["precision"] == "32" and "agreement_vs_fp32" not in exact["inference"]
    report = fast["inference"]["agreement_vs_fp32"]
    assert report["images"] == 36 and report["top1_agreement"] >= MIN_TOP1_AGREEMENT
    fast_p, exact_p = _probs(tmp / "fast"), _probs(tmp / "fp32")
    assert fast_p.keys() == exact_p.keys() and len(fast_p) == 36
    top1 = np.mean([max(fast_p[k], key=fast_p[k].get) == max(exact_p[k], key=exact_p[k].get) for k in fast_p])
    diff = max(abs(fast_p[k][c] - exact_p[k][c]) for k in fast_p for c in exact_p[k])
    assert top1 >= MIN_TOP1_AGREEMENT and diff <= MAX_PROB_DIFF
    assert diff > 0, "bf16 really ran (outputs are not bit-identical to fp32)"
    assert diff == pytest.approx(report["max_abs_prob_diff"], abs=2e-6), "the report measures the same"

    # the exact path matches the module itself in fp32 eager on one image
    module = load_module(ckpt)
    _, eval_tf = build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])
    path = sorted(exact_p)[0]
    with torch.no_grad():
        probs = module.head.probabilities(module(eval_tf(load_rgb(path))[None]))[0]
    for name, p in exact_p[path].items():
        assert p == pytest.approx(float(probs[module.class_names.index(name)]), abs=1e-5)


def test_embeddings_fast_path_reports_cosine_agreement(trained):
    tmp, images, ckpt = trained
    summary = run(_cfg(tmp, images, ckpt, "embed", "mode=embed", f"predict.input={images}",
                       "predict.precision=bf16"))
    report = summary["inference"]["agreement_vs_fp32"]
    assert report["images"] == 16 and report["min_cosine"] > 0.999
    assert np.load(tmp / "embed" / "embeddings.npy").shape == (36, load_module(ckpt).backbone.num_features)


def test_channels_last_and_compile_are_temporary():
    module = ClassificationModule(class_names=["a", "b"], model={"name": "test_efficientnet"})
    backbone = module.backbone
    with fast_model(module, channels_last=True, compile=True):
        assert module.backbone is not backbone and hasattr(module.backbone, "_orig_mod")
        assert backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.backbone is backbone and backbone.conv_stem.weight.is_contiguous()


def test_inference_settings_are_checked():
    assert InferenceSettings.from_config({"precision": 32}).precision == "32"
    assert resolve_precision("32", "cpu") == "32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") in ("bf16", "32")
    with pytest.raises(ValueError, match=r"precision='fp16' is not supported; use one of auto, bf16, 32"):
        InferenceSettings.from_config({"precision": "fp16"})
    with pytest.raises(ValueError, match=r"predict.channels_last must be true or false, got 'yes'"):
        InferenceSettings.from_config({"channels_last": "yes"})
    with pytest.raises(ValueError, match=r"predict.check_agreement must be a number of images >= 0"):
        InferenceSettings.from_config({"check_agreement": -1})


# ---------------------------------------------------------------------------------------------- ONNX
def test_onnx_export_matches_pytorch_on_real_images(trained):
    ort = pytest.importorskip("onnxruntime")
    from b4transfer.tasks.classification.onnx_export import onnx_metadata

    tmp, images, ckpt = trained
    summary = run(_cfg(tmp, images, ckpt, "onnx", "mode=export", "export.format=onnx"))
    path = tmp / "onnx" / "export" / "model.onnx"
    assert summary["onnx"]["path"] == str(path) and summary["onnx"]["max_abs_diff"] <= ONNX_ATOL
    assert not (tmp / "onnx" / "export" / "model.safetensors").exists(), "only the asked-for format"
    module = load_module(ckpt)
    meta = onnx_metadata(path)
    assert meta["label_names"] == module.class_names == ["blue", "green", "red"]
    assert meta["data_config"]["test_input_size"] == list(module.data_config["eval"]["input_size"])
    _, eval_tf = build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])
    x = torch.stack([eval_tf(load_rgb(p)) for p in sorted(images.rglob("*.png"))[:5]])
    logits = ort.InferenceSession(str(path)).run(["logits"], {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = module(x)
    assert logits.shape == (5, 3)  # dynamic batch: exported with 1, run with 5
    assert np.abs(logits - expected.numpy()).max() <= ONNX_ATOL


def test_export_both_formats_and_bad_formats(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from b4transfer.tasks.classification.onnx_export import export_onnx

    tmp, images, ckpt = trained
    run(_cfg(tmp, images, ckpt, "both", "mode=export", "export.format=[timm,onnx]"))
    files = {p.name for p in (tmp / "both" / "export").iterdir()}
    assert {"model.onnx", "model.safetensors", "config.json"} <= files
    assert json.loads((tmp / "both" / "summary.json").read_text())["onnx"]["max_abs_diff"] <= ONNX_ATOL
    with pytest.raises(ValueError, match=r"export.format='tflite' is not supported; use one of timm, onnx"):
        run(_cfg(tmp, images, ckpt, "bad", "mode=export", "export.format=tflite"))
    assert not (tmp / "bad").exists(), "checked before anything is written"
    module = load_module(ckpt)
    kwargs = dict(backbone=module.backbone, head_fc=module.head.fc, class_names=module.class_names,
                  data_config=module.data_config)
    with pytest.raises(ValueError, match=r"export.onnx_opset must be an integer opset in 11..21, got 7"):
        export_onnx(**kwargs, out_dir=tmp_path, opset=7)
    (tmp_path / "model.onnx").write_text("someone else's model")
    with pytest.raises(FileExistsError, match=r"model.onnx exists and was not written by b4transfer"):
        export_onnx(**kwargs, out_dir=tmp_path)
    assert (tmp_path / "model.onnx").read_text() == "someone else's model"


# fp32 in another memory layout changes only the summation order: scores move by ~1e-6, boxes by ~1e-4 px.
SCORE_THRESH, SCORE_ATOL, MIN_IOU, MAX_DETECTIONS = 0.3, 1e-4, 0.999, 1000


def _spread_head_outputs(module, image, meta, logit_std=1.0, logit_bias=-2.0, delta_std=0.05) -> None:
    """Redraw the random-init heads' last layers: scores spread over (0, 1), boxes move off their anchors.

    torchvision's head init (std 0.01 convs, prior 0.01) gives every anchor a score of 0.0100 +- 1e-5, a
    sea of near-ties; the logits are rescaled from their inputs' measured RMS to ``logit_std``.
    """
    head = module.head.detector.head
    layers = {"cls": head.classification_head.cls_logits, "reg": head.regression_head.bbox_reg}
    sq = {k: [] for k in layers}
    hooks = [m.register_forward_pre_hook(lambda _, a, k=k: sq[k].append(a[0].pow(2).mean()))
             for k, m in layers.items()]
    with torch.no_grad():
        module.predict_step(([image], [meta]))
        for h in hooks:
            h.remove()
        for (k, layer), std, bias in zip(layers.items(), (logit_std, delta_std), (logit_bias, 0.0)):
            rms = float(torch.stack(sq[k]).mean().sqrt())
            layer.weight.normal_(std=std / (rms * layer.weight[0].numel() ** 0.5))
            layer.bias.fill_(bias)


def _detector_and_loader():
    """A random-init RetinaNet with spread scores, and 4 images in batches of 2.

    NMS is off (``nms_thresh=1``) and no top-k cut bites (fewer boxes than ``detections_per_img``, checked):
    the detections are the set of anchors scoring >= ``SCORE_THRESH``, whatever the order of equal scores.
    """
    from torch.utils.data import DataLoader

    from b4transfer.tasks.detection.data.datamodule import collate_detection

    torch.manual_seed(0)
    head = {"score_thresh": SCORE_THRESH, "nms_thresh": 1.0, "detections_per_img": MAX_DETECTIONS,
            "fpn_channels": 32}
    module = DetectionModule(
        class_names=["a", "b"], model={"name": "test_efficientnet", "pretrained": False}, head=head,
        data={"image_size": 64},
    ).eval()
    g = torch.Generator().manual_seed(1)
    meta = {"scale": torch.tensor(0.5), "orig_size": torch.tensor([128, 128])}
    items = [(torch.rand(3, 64, 64, generator=g), {"index": i, **meta}) for i in range(4)]
    _spread_head_outputs(module, *items[0])
    return module, DataLoader(items, batch_size=2, collate_fn=collate_detection)


def _unmatched(ref: dict, other: dict) -> int:
    """Boxes of ``ref`` scoring >= SCORE_THRESH + SCORE_ATOL (clear of the cut) that ``other`` lacks: no box
    of the same label at IoU >= MIN_IOU with a score within SCORE_ATOL. Boxes clipped to zero area (no IoU)
    are left out."""
    from torchvision.ops import box_area, box_iou

    keep = (ref["scores"] >= SCORE_THRESH + SCORE_ATOL) & (box_area(ref["boxes"]) > 0)
    boxes, labels, scores = ref["boxes"][keep], ref["labels"][keep], ref["scores"][keep]
    same = (
        (box_iou(boxes, other["boxes"]) >= MIN_IOU)
        & (labels[:, None] == other["labels"][None])
        & ((scores[:, None] - other["scores"][None]).abs() <= SCORE_ATOL)
    )
    return int((~same.any(1)).sum())


def test_detection_fast_path_channels_last_gives_the_fp32_boxes_and_bf16_is_checked():
    from b4transfer.tasks.detection.predict import run_detection_inference

    module, loader = _detector_and_loader()
    kwargs = {"accelerator": "cpu", "enable_progress_bar": False}
    plain, report = run_detection_inference(
        module, loader, settings=InferenceSettings(precision="32", channels_last=False), trainer_kwargs=kwargs
    )
    fast, _ = run_detection_inference(
        module, loader, settings=InferenceSettings(precision="32", channels_last=True), trainer_kwargs=kwargs
    )
    assert "agreement_vs_fp32" not in report  # fp32 eager: nothing to check
    assert [d["index"] for d in fast] == [0, 1, 2, 3]
    assert all(50 <= len(d["boxes"]) < MAX_DETECTIONS for d in plain + fast)  # many boxes, no top-k cut
    for a, b in zip(plain, fast):  # the same set of detections, matched both ways (never by rank)
        assert _unmatched(a, b) == 0 and _unmatched(b, a) == 0
    assert max(float(d["boxes"].max()) for d in fast) > 64  # original-image pixels (scale 0.5)
    assert all(p.is_contiguous() for p in module.parameters())  # channels_last undone afterwards
    bf16, report = run_detection_inference(
        module, loader, settings=InferenceSettings(precision="bf16", check_agreement=4),
        trainer_kwargs=kwargs, min_score=SCORE_THRESH,
    )
    check = report["agreement_vs_fp32"]
    with torch.no_grad():  # fp32 eager, one image at a time, as the check runs it
        ref = [module.predict_step(([x], [m]))[0] for x, m in loader.dataset]
    assert report["precision"] == "bf16" and check["images"] == 4
    assert check["boxes_compared"] == sum(len(d["boxes"]) for d in ref + bf16)  # all >= the detector's cut
    assert check["box_agreement"] >= 0.95 and all(d["boxes"].dtype == torch.float32 for d in bf16)
    assert sum(_unmatched(a, b) for a, b in zip(ref, bf16)) > 0, "bf16 really ran (not the fp32 boxes)"


def test_detection_agreement_counts_boxes_found_by_both_runs():
    from b4transfer.tasks.detection.predict import detection_agreement

    module, loader = _detector_and_loader()
    dataset = loader.dataset
    same = [module.predict_step(([x], [m]))[0] for x, m in dataset]
    kwargs = {"n": 4, "device": torch.device("cpu"), "min_score": 0.0}
    assert detection_agreement(module, dataset, same, **kwargs)["box_agreement"] == 1.0  # same code
    moved = [{**d, "boxes": d["boxes"] + 1000.0} for d in same]  # off the image: no box to match
    assert detection_agreement(module, dataset, moved, **kwargs)["box_agreement"] == 0.0
    relabelled = [{**d, "labels": d["labels"] + 2} for d in same]  # same boxes, classes no box has
    assert detection_agreement(module, dataset, relabelled, **kwargs)["box_agreement"] == 0.0


@pytest.mark.parametrize("detector", ["retinanet", "fcos", "faster_rcnn"])
def test_bf16_detector_runs_the_body_in_bf16_and_restores_it(detector):
    from b4transfer.tasks.detection.predict import Bf16Part, bf16_detector

    module = DetectionModule(
        class_names=["a", "b"], model={"name": "test_efficientnet", "pretrained": False},
        head={"detector": detector, "fpn_channels": 64}, data={"image_size": 64},
    ).eval()
    body = module.backbone
    with bf16_detector(module, "cpu"):
        assert isinstance(module.backbone, Bf16Part)
        assert all(m.dtype == torch.float32 for m in module.backbone(torch.rand(1, 3, 64, 64)))
        module._share_backbone()
        out = module.head([torch.rand(3, 64, 64)])[0]
        assert out["boxes"].dtype == torch.float32
    assert module.backbone is body
