"""task=segmentation: decoders sized from feature_info, the loss, training with each decoder, predicted
masks at the original image sizes, the export loading back without Lightning, ONNX agreeing with PyTorch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import TINY, compose_cfg

from b4transfer import tasks
from b4transfer.backbone import create_backbone, feature_channels
from b4transfer.errors import NotSupportedError, UserError
from b4transfer.modes import run
from b4transfer.tasks.segmentation.export import export_segmenter_onnx, load_exported_segmenter
from b4transfer.tasks.segmentation.head import build_head
from b4transfer.tasks.segmentation.losses import SegmentationLoss, pixel_class_weights

SEG = (
    "task=segmentation",
    "data.source.image_size=64",
    "data.source.train_images=12",
    "data.source.val_images=6",
    "data.image_size=64",
    "head.fpn_channels=16",
    "head.seg_channels=16",
)


def seg_cfg(tmp: Path, name: str, *extra: str):
    return compose_cfg(*TINY, *SEG, f"data.source.root={tmp / 'demo'}", f"run_dir={tmp / name}", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    summary = run(seg_cfg(tmp, "train", "trainer.max_epochs=2"))
    return tmp, summary


@pytest.mark.parametrize("name", ["test_efficientnet", "efficientnet_b0"])
@pytest.mark.parametrize("decoder", ["fpn", "unet"])
def test_decoders_size_themselves_from_feature_info(name, decoder):
    strides = [4, 8, 16, 32] if decoder == "fpn" else [2, 4, 8, 16, 32]
    indices = tuple(range(5 - len(strides), 5))
    backbone = create_backbone(name, pretrained=False, features_only=True, out_indices=indices).eval()
    head = build_head(
        backbone,
        3,
        {"decoder": decoder, "fpn_channels": 16, "seg_channels": 16, "decoder_channels": [32, 16, 16, 8, 8]},
    ).eval()
    x = torch.rand(1, 3, 72, 56)  # not square, not a multiple of 32
    with torch.no_grad():
        logits = head(backbone(x), x.shape[-2:])
    assert logits.shape == (1, 3, 72, 56)
    first = next(m for m in head.decoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels in feature_channels(backbone) + [
        feature_channels(backbone)[-1] + feature_channels(backbone)[-2]
    ]


def test_loss_ignores_the_ignore_index_and_adds_dice_and_class_weights():
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    ce = SegmentationLoss()(logits, target)
    ignored = target.clone()
    ignored[:, :4] = 255
    changed = logits.clone()
    changed[:, :, :4] = 100.0  # logits of ignored pixels do not matter
    assert torch.isclose(SegmentationLoss()(logits, ignored), SegmentationLoss()(changed, ignored))
    assert SegmentationLoss(dice_weight=1.0)(logits, target) > ce
    weighted = SegmentationLoss(class_weights=[0.0, 0.0, 1.0])(logits, target)
    only_two = torch.where(target == 2, target, torch.full_like(target, 255))
    assert torch.isclose(weighted, SegmentationLoss()(logits, only_two))
    weights = pixel_class_weights("auto", [900, 90, 10, 0], list("abcd"))
    assert weights[3] == 0 and weights[0] < weights[1] < weights[2] and sum(weights) / 3 == pytest.approx(1.0)
    with pytest.raises(UserError, match=r"loss.class_weights=\[1\]: give null, auto .* 4 weights"):
        pixel_class_weights([1], [1, 1, 1, 1], list("abcd"))


def test_training_logs_miou_keeps_the_best_by_it_and_draws_validation_images(trained):
    tmp, summary = trained
    run_dir = tmp / "train"
    assert summary["task"] == "segmentation" and summary["best_checkpoint"]
    for key in ("val/miou", "val/pixel_acc", "val/dice", "val/iou_background", "val/dice_background"):
        assert key in summary["metrics"], key
    assert summary["best_score"] == pytest.approx(
        max(
            float(r["val/miou"])
            for r in csv.DictReader((run_dir / "metrics.csv").open())
            if r.get("val/miou")
        )
    )
    assert Image.open(run_dir / "val_predictions.png").size[0] > 3 * 64
    assert set(summary["class_pixel_share"]) == {"background", "circle", "square", "triangle"}


def test_predicted_masks_come_back_at_the_original_sizes(trained, tmp_path):
    tmp, summary = trained
    sizes = [(50, 70), (97, 40), (64, 64)]
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.jpg"
        )
    cfg = seg_cfg(
        tmp,
        "predict",
        "mode=predict",
        f"ckpt_path={summary['best_checkpoint']}",
        f"predict.input={tmp_path}",
        "predict.draw=true",
    )
    out = run(cfg)
    for i, size in enumerate(sizes):
        mask = Image.open(Path(out["masks_dir"]) / f"{i}.png")
        assert mask.size == size and mask.mode == "P"
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2, 3}
        assert Image.open(Path(out["overlays_dir"]) / f"{i}.png").size == size
    with open(out["predictions"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and float(rows[0]["share_background"]) + float(rows[0]["share_circle"]) <= 1.0001


def test_the_export_loads_back_without_lightning_and_matches_the_module(trained):
    tmp, summary = trained
    model, config = load_exported_segmenter(summary["export_dir"])
    assert (
        config["class_names"] == ["background", "circle", "square", "triangle"] and config["image_size"] == 64
    )
    module = tasks.load_module(summary["best_checkpoint"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), module(x), atol=1e-5)
    assert type(model).__module__.startswith("b4transfer") and not hasattr(model, "trainer")


def test_onnx_argmax_agrees_with_pytorch_on_at_least_999_per_mille_of_pixels(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    tmp, summary = trained
    module = tasks.load_module(summary["best_checkpoint"])
    images = sorted((tmp / "demo" / "images" / "val").glob("*.png"))
    report = export_segmenter_onnx(module, tmp_path, check_images=images)
    assert report["check"]["images"] == 4 and report["check"]["pixel_agreement"] >= 0.999
    session = ort.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 64, 64)
    got = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    with torch.no_grad():
        ref = module(x)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.999


def test_unet_decoder_dice_loss_and_bf16_train(tmp_path):
    cfg = seg_cfg(
        tmp_path,
        "unet",
        "head.decoder=unet",
        "head.decoder_channels=[32,16,16,8,8]",
        "loss.dice_weight=0.5",
        "loss.class_weights=auto",
        "trainer.limit_train_batches=1",
        "trainer.precision=bf16-mixed",
        "ema.enabled=true",
    )
    summary = run(cfg)
    assert summary["global_step"] == 1 and "val/miou" in summary["metrics"]
    config = json.loads((Path(summary["export_dir"]) / "config.json").read_text())
    assert config["head"]["decoder"] == "unet" and config["head"]["feature_strides"] == [2, 4, 8, 16, 32]
    module = tasks.load_module(summary["last_checkpoint"])
    assert module.hparams.loss["dice_weight"] == 0.5 and len(module.hparams.loss["class_weights"]) == 4


def test_other_tasks_options_are_refused_in_one_line(tmp_path):
    for extra, key in (  # loss.name is classification's (refused at composition: test_settings.py)
        ("+loss.name=focal", "loss.name=focal"),
        ("+data.sampler=balanced", "data.sampler"),
        ("loss.class_weights=effective", "loss.class_weights=effective"),
    ):
        with pytest.raises(NotSupportedError, match=f"task=segmentation does not support {key}"):
            run(seg_cfg(tmp_path, extra.split("=")[0].strip("+"), extra))
    with pytest.raises(UserError, match=r"head.decoder='deeplab' is not a decoder; choose one of fpn, unet"):
        run(seg_cfg(tmp_path, "deeplab", "head.decoder=deeplab"))


def test_tta_averages_logits_for_validate_and_predict(trained, tmp_path):
    tmp, summary = trained
    ckpt = summary["best_checkpoint"]
    report = run(seg_cfg(tmp, "tta-val", "mode=validate", f"ckpt_path={ckpt}", "tta=hflip_scales"))["tta"]
    assert report["monitor"] == "val/miou" and len(report["views"]) == 6
    assert 0 <= report["with_tta"] <= 1 and report["without_tta"] == pytest.approx(
        summary["best_score"], abs=1e-4
    )
    Image.fromarray(np.zeros((45, 70, 3), np.uint8)).save(tmp_path / "a.png")
    out = run(
        seg_cfg(
            tmp, "tta-predict", "mode=predict", f"ckpt_path={ckpt}", f"predict.input={tmp_path}", "tta=hflip"
        )
    )
    assert out["tta"]["name"] == "hflip" and Image.open(Path(out["masks_dir"]) / "a.png").size == (70, 45)


def test_a_checkpoint_predicts_without_task_on_the_command_line(trained, tmp_path):
    tmp, summary = trained
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(tmp_path / "a.png")
    cfg = compose_cfg(
        *TINY,
        "mode=predict",
        f"ckpt_path={summary['best_checkpoint']}",
        f"predict.input={tmp_path}",
        f"run_dir={tmp / 'bare-predict'}",
    )
    out = run(cfg)
    assert out["task"] == "segmentation" and Image.open(Path(out["masks_dir"]) / "a.png").size == (50, 30)


@pytest.mark.slow
def test_ddp_two_processes_train_the_same_weights_and_log_miou(tmp_path):
    from tests.test_cli import _ok, cli

    out = tmp_path / "states"
    _ok(
        cli(
            *TINY,
            *SEG,
            "strategy=ddp",
            "trainer.devices=2",
            "data.batch_size=4",
            "finetune=freeze_unfreeze",
            "finetune.unfreeze_at_epoch=1",
            "trainer.max_epochs=2",
            "+callbacks.states._target_=tests.probes.SaveStates",
            f"+callbacks.states.out_dir={out}",
            f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path,
        )
    )
    ranks = [torch.load(out / f"rank{r}_epoch1.pt", weights_only=True) for r in (0, 1)]
    for part in ("backbone", "head"):
        for key, value in ranks[0][part].items():
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(value, ranks[1][part][key]), f"{part}.{key} differs between the ranks"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (
        0 <= summary["metrics"]["val/miou"] <= 1 and (tmp_path / "run" / "export" / "config.json").is_file()
    )
