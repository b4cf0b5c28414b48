"""Tests for b4transfer.export.timm_format: plain timm reloads the export with the same logits, labels,
data config."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from b4transfer.backbone import create_backbone, resolve_data_configs
from b4transfer.export.timm_format import export_timm, load_exported

TINY = "test_efficientnet"
LABELS = ["cat", "dog", "eel"]


@pytest.fixture
def trained():
    """A tiny backbone with non-default BN statistics and a random 3-class head."""
    torch.manual_seed(0)
    backbone = create_backbone(TINY, pretrained=False)
    with torch.no_grad():
        backbone.train()(torch.randn(4, 3, 64, 64))  # move the BN running stats off their init
    backbone.eval()
    head = nn.Linear(backbone.num_features, len(LABELS))
    train_cfg, eval_cfg = resolve_data_configs(backbone, image_size=96, eval_image_size=112,
                                               eval_crop_pct=1.0)
    return backbone, head, {"train": train_cfg, "eval": eval_cfg}


@pytest.fixture
def exported(trained, tmp_path):
    backbone, head, data_config = trained
    out = export_timm(backbone=backbone, head_fc=head, model_name=f"{TINY}.r160_in1k", class_names=LABELS,
                      data_config=data_config, out_dir=tmp_path / "export", extra={"checkpoint": "best.ckpt"})
    return out


def _max_diff(model, trained):
    backbone, head, _ = trained
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return (model.eval()(x) - head(backbone(x))).abs().max().item()


def test_plain_timm_overlay_recipe_gives_identical_logits(exported, trained):
    model = timm.create_model(
        TINY, pretrained=True, num_classes=3,
        pretrained_cfg_overlay=dict(file=str(exported / "model.safetensors"), num_classes=3),
    )
    assert _max_diff(model, trained) < 1e-5


def test_timm_local_dir_gives_identical_logits_and_labels(exported, trained):
    model = timm.create_model(f"local-dir:{exported}", pretrained=True)
    assert _max_diff(model, trained) < 1e-5
    assert list(model.pretrained_cfg["label_names"]) == LABELS


def test_trap_overlay_without_num_classes_gives_a_random_head(exported, trained):
    """Documents timm's behaviour: without num_classes in the overlay the exported classifier is dropped.

    If this starts failing, timm changed load_pretrained and the warning in export.py can be relaxed.
    """
    model = timm.create_model(
        TINY, pretrained=True, num_classes=3,
        pretrained_cfg_overlay=dict(file=str(exported / "model.safetensors")),
    )
    assert _max_diff(model, trained) > 1e-3
    assert not torch.equal(model.classifier.weight, trained[1].weight)


def test_load_exported_is_eval_mode_with_data_config(exported, trained):
    model = load_exported(exported)
    assert not model.training
    assert _max_diff(model, trained) < 1e-5
    train_cfg, eval_cfg = trained[2]["train"], trained[2]["eval"]
    assert resolve_model_data_config(model) == train_cfg
    assert resolve_model_data_config(model, use_test_size=True) == eval_cfg
    assert model.pretrained_cfg["label_names"] == tuple(LABELS)


def test_config_json_carries_labels_data_config_and_extras(exported, trained):
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == TINY and config["num_classes"] == 3
    assert config["num_features"] == trained[0].num_features and config["label_names"] == LABELS
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 96, 96] and cfg["test_input_size"] == [3, 112, 112]
    assert cfg["crop_pct"] == 0.95 and cfg["test_crop_pct"] == 1.0 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert config["b4transfer_version"] and config["multi_label"] is False
    assert config["checkpoint"] == "best.ckpt"
    assert not list(exported.glob(".*tmp")), "no temporary files are left behind"


def test_flat_data_config_and_multi_label(trained, tmp_path):
    backbone, head, data_config = trained
    out = export_timm(backbone=backbone, head_fc=head, model_name=TINY, class_names=LABELS,
                      data_config=data_config["eval"], out_dir=tmp_path / "e", multi_label=True)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 112, 112] and config["multi_label"] is True
    assert "test_input_size" not in config["pretrained_cfg"]


def test_reexport_replaces_our_files_but_never_user_files(exported, trained, tmp_path):
    backbone, head, data_config = trained
    (exported / "notes.txt").write_text("mine")
    export_timm(backbone=backbone, head_fc=head, model_name=TINY, class_names=["x", "y", "z"],
                data_config=data_config, out_dir=exported)
    assert json.loads((exported / "config.json").read_text())["label_names"] == ["x", "y", "z"]
    assert (exported / "notes.txt").read_text() == "mine"
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"architecture": "resnet50"}')
    with pytest.raises(FileExistsError, match=r"user already holds config\.json not written by b4transfer"):
        export_timm(backbone=backbone, head_fc=head, model_name=TINY, class_names=LABELS,
                    data_config=data_config, out_dir=user)
    assert (user / "config.json").read_text() == '{"architecture": "resnet50"}'
    assert not (user / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"head_fc": nn.Linear(256, 4)}, ValueError, r"head_fc maps 256 -> 4.*3 class_names"),
        ({"class_names": ["a", "a", "b"]}, ValueError, r"class_names must be distinct strings"),
        ({"model_name": "efficientnet_b0"}, ValueError, r"model_name='efficientnet_b0' does not match"),
        ({"head_fc": nn.Conv2d(256, 3, 1)}, TypeError, r"head_fc must be the head's nn\.Linear, got Conv2d"),
        ({"extra": {"num_classes": 5}}, ValueError, r"extra keys \['num_classes'\] would overwrite"),
        ({"extra": {"when": object()}}, ValueError, r"extra must be JSON-serialisable"),
        ({"data_config": {"input_size": (3, 64, 64)}}, ValueError, r"data_config lacks mean, std, crop_pct"),
    ],
)
def test_bad_export_arguments(trained, tmp_path, change, error, match):
    backbone, head, data_config = trained
    kwargs = dict(backbone=backbone, head_fc=head, model_name=TINY, class_names=LABELS,
                  data_config=data_config, out_dir=tmp_path / "e")
    with pytest.raises(error, match=match):
        export_timm(**{**kwargs, **change})
    assert not (tmp_path / "e" / "model.safetensors").exists()


def test_features_only_backbone_is_rejected(trained, tmp_path):
    feats = create_backbone(TINY, pretrained=False, features_only=True)
    with pytest.raises(TypeError, match=r"classification trunk .*features_only=False"):
        export_timm(backbone=feats, head_fc=trained[1], model_name=TINY, class_names=LABELS,
                    data_config=trained[2], out_dir=tmp_path / "e")


def test_load_exported_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json does not exist; pass the directory"):
        load_exported(tmp_path)


@pytest.mark.parametrize("half", ["both", "eval"])
def test_timm_releases_without_data_config_get_the_same_preprocessing(trained, tmp_path, monkeypatch, half):
    """timm 1.0.9-1.0.30's save_config_for_hf takes no data_config: export must neither crash nor
    keep the source checkpoint's preprocessing there (seen on a GPU machine with timm 1.0.29)."""
    import b4transfer.export.timm_format as export_module

    backbone, head, data_config = trained
    data_config = data_config if half == "both" else data_config["eval"]

    def export(name):
        return json.loads((export_timm(backbone=backbone, head_fc=head, model_name=TINY, class_names=LABELS,
                                       data_config=data_config, out_dir=tmp_path / name) / "config.json")
                          .read_text())

    current = export("current")
    real = export_module.save_config_for_hf

    def old_signature(model, config_path, model_config=None, model_args=None):
        assert hasattr(config_path, "open"), "timm 1.0.29 calls config_path.open(): a str fails there"
        return real(model, config_path, model_config=model_config, model_args=model_args)

    monkeypatch.setattr(export_module, "save_config_for_hf", old_signature)
    old = export("old")
    keys = ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "mean", "std", "interpolation",
            "crop_mode", "pool_size", "test_pool_size")
    def data(config):
        return {k: config["pretrained_cfg"].get(k) for k in keys}

    assert data(old) == data(current)
    assert old["label_names"] == current["label_names"] == LABELS


def test_detection_and_segmentation_configs_say_where_the_weights_came_from(tmp_path):
    from b4transfer.tasks.detection import DetectionModule
    from b4transfer.tasks.detection.export import export_detector, load_exported_detector
    from b4transfer.tasks.segmentation import SegmentationModule
    from b4transfer.tasks.segmentation.export import export_segmenter, load_exported_segmenter

    model = {"name": f"{TINY}.r160_in1k", "pretrained": False}  # a tagged name, random weights
    det = DetectionModule(class_names=["a", "b"], model=model, head={"fpn_channels": 32},
                          data={"image_size": 64})
    seg = SegmentationModule(class_names=["bg", "x"], model=model, data={"image_size": 64})
    export_detector(det, tmp_path / "det")
    export_segmenter(seg, tmp_path / "seg")
    for name, load in (("det", load_exported_detector), ("seg", load_exported_segmenter)):
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["weights_origin"] == {"source": "random"}, name
        assert load(tmp_path / name)[1]["weights_origin"] == {"source": "random"}  # and it still loads
