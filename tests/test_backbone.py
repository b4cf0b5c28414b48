"""Tests for b4transfer.backbone: shapes, data configs, and every pretrained-loading path, offline."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from timm.data import resolve_model_data_config

from b4transfer.backbone import (
    PretrainedWeightsUnavailable,
    create_backbone,
    feature_channels,
    feature_reductions,
    resolve_data_configs,
)
from b4transfer.backbone import weights as bb

TINY = "test_efficientnet"


class _Payload:
    """A plain Python object: pickling it into a weights file must be refused on load."""


@pytest.fixture(scope="module")
def b4():
    return create_backbone("efficientnet_b4.ra2_in1k", pretrained=False).eval()


@pytest.fixture
def offline_empty_cache(monkeypatch, tmp_path):
    """An empty HF / torch-hub cache in tmp_path, with the hub forbidden."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(url, timeout):
        raise AssertionError(f"the hub must not be probed here ({url})")

    monkeypatch.setattr(bb, "_reachable", no_network)
    return tmp_path / "hf" / "hub"


def _features(model, size=64):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return model.eval()(x)


def _tiny_full_state_dict():
    """A test_efficientnet state dict with its 1000-class classifier, like the hub's files."""
    torch.manual_seed(1)
    return timm.create_model(TINY, num_classes=1000).state_dict()


# --------------------------------------------------------------------------- shapes and data configs


def test_b4_feature_maps_strides_and_trunk(b4):
    feats = create_backbone("efficientnet_b4", pretrained=False, features_only=True).eval()
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        maps = feats(x)
        trunk = b4.forward_features(x)
        pooled = b4(x)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (24, 160, 160), (32, 80, 80), (56, 40, 40), (160, 20, 20), (448, 10, 10)
    ]
    assert feature_channels(feats) == [24, 32, 56, 160, 448]
    assert feature_reductions(feats) == [2, 4, 8, 16, 32]
    assert tuple(trunk.shape) == (1, 1792, 10, 10)
    assert b4.num_features == 1792 and tuple(pooled.shape) == (1, 1792)
    assert resolve_data_configs(feats) == resolve_data_configs(b4)  # features_only keeps the test size


def test_b4_data_configs_match_model_card_and_timm(b4):
    train, evaluation = resolve_data_configs(b4)
    assert train["input_size"] == (3, 320, 320) and train["crop_pct"] == 0.875
    assert evaluation["input_size"] == (3, 384, 384) and evaluation["crop_pct"] == 1.0
    assert evaluation["interpolation"] == train["interpolation"] == "bicubic"
    assert evaluation == resolve_model_data_config(b4, use_test_size=True)
    assert train == resolve_model_data_config(b4)
    assert evaluation["mean"] == (0.485, 0.456, 0.406) and evaluation["std"] == (0.229, 0.224, 0.225)


def test_data_config_overrides(b4):
    train, evaluation = resolve_data_configs(b4, image_size=160)
    assert train["input_size"] == (3, 160, 160) and evaluation["input_size"] == (3, 192, 192)
    train, evaluation = resolve_data_configs(
        b4, image_size=160, eval_image_size=224, crop_pct=0.9, eval_crop_pct=0.95,
        interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=[0.25, 0.25, 0.25],
    )
    assert evaluation["input_size"] == (3, 224, 224) and train["crop_pct"] == 0.9
    assert evaluation["crop_pct"] == 0.95
    assert train["interpolation"] == evaluation["interpolation"] == "bilinear"
    assert train["mean"] == evaluation["mean"] == (0.5, 0.5, 0.5) and evaluation["std"] == (0.25, 0.25, 0.25)


def test_data_config_without_test_size_keeps_ratio_one():
    tiny = create_backbone(TINY, pretrained=False)
    train, evaluation = resolve_data_configs(tiny, image_size=96)
    assert train["input_size"] == evaluation["input_size"] == (3, 96, 96)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 0}, r"data\.image_size must be a positive integer.*got 0"),
        ({"image_size": 3.5}, r"data\.image_size .*got 3\.5"),
        ({"image_size": True}, r"data\.image_size .*got True"),
        ({"eval_image_size": -1}, r"data\.eval_image_size .*got -1"),
        ({"crop_pct": 1.5}, r"data\.crop_pct must be a fraction in \(0, 1\].*got 1\.5"),
        ({"eval_crop_pct": 0}, r"data\.eval_crop_pct .*got 0"),
        ({"interpolation": "cubic"}, r"data\.interpolation='cubic' .*bicubic"),
        ({"mean": (0.5, 0.5)}, r"data\.mean must be 3 numbers"),
        ({"std": (0.2, 0.0, 0.2)}, r"data\.std must be 3 positive numbers"),
    ],
)
def test_data_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_data_configs(create_backbone(TINY, pretrained=False), **kwargs)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "efficientnet_b0"])
def test_other_efficientnets_build(name):
    model = create_backbone(name, pretrained=False)
    assert tuple(_features(model).shape) == (2, model.num_features)


def test_feature_helpers_need_features_only():
    with pytest.raises(TypeError, match=r"features_only=True"):
        feature_channels(create_backbone(TINY, pretrained=False))


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("efficientnet_b9", r"model\.name='efficientnet_b9' is not a timm model\. Close matches: .*_b8"),
        ("efficentnet_b4", r"Close matches: .*efficientnet_b4.*tf_efficientnet_lite0"),
        ("efficientnet_b4.bogus", r"model\.name='efficientnet_b4\.bogus'.*no pretrained tag.*ra2_in1k"),
    ],
)
def test_unknown_names_are_rejected(name, match):
    with pytest.raises(ValueError, match=match):
        create_backbone(name, pretrained=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"out_indices": (1, 2)}, r"model\.out_indices=\(1, 2\) only applies with features_only=True"),
        ({"features_only": True, "out_indices": (1, 9)}, r"out_indices=\(1, 9\) is out of range.*0\.\.4"),
        ({"features_only": True, "out_indices": "1,2"}, r"model\.out_indices must be a non-empty sequence"),
        ({"drop_rate": 1.5}, r"model\.drop_rate must be a number in \[0, 1\), got 1\.5"),
        ({"drop_path_rate": -0.1}, r"model\.drop_path_rate .*got -0\.1"),
        ({"hub_timeout": 0}, r"model\.hub_timeout must be a positive number"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_backbone(TINY, pretrained=False, **kwargs)


def test_features_only_out_indices():
    model = create_backbone(TINY, pretrained=False, features_only=True, out_indices=(2, 4))
    assert len(feature_channels(model)) == 2 and feature_reductions(model) == [8, 32]


# --------------------------------------------------------------------------- pretrained: cache / hub


def test_offline_without_cache_fails_fast_with_the_ways_out(offline_empty_cache):
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_backbone("efficientnet_b4.ra2_in1k", pretrained=True)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "model.name='efficientnet_b4.ra2_in1k'" in message and "HF_HUB_OFFLINE" in message
    assert str(offline_empty_cache) in message and "hf download timm/efficientnet_b4.ra2_in1k" in message
    assert "model.weights=PATH" in message and "model.pretrained=false" in message


def test_unreachable_hub_fails_fast_and_never_gives_random_weights(offline_empty_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(bb, "_reachable", lambda url, timeout: False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable, match=r"test_efficientnet.*could not be reached"):
        create_backbone(TINY, pretrained=True)
    assert time.monotonic() - start < 10


def test_probe_answers_and_hard_deadline():
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (http.server's naming)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()  # accepts the TCP handshake (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        assert bb._reachable(f"http://127.0.0.1:{server.server_port}", 2.0)  # any HTTP answer counts
        start = time.monotonic()
        assert not bb._reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", 0.5)
        assert time.monotonic() - start < 2
    finally:
        server.shutdown()
        silent.close()


def _fill_hf_cache(hub_dir, repo_id, state_dict):
    """Lay a file out as huggingface_hub caches it: refs/main -> snapshots/<commit>/model.safetensors."""
    repo_dir = hub_dir / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    safetensors.torch.save_file(state_dict, repo_dir / "snapshots" / commit / "model.safetensors")


def test_pretrained_loads_from_hf_cache_without_network(offline_empty_cache):
    full = _tiny_full_state_dict()
    _fill_hf_cache(offline_empty_cache, "timm/test_efficientnet.r160_in1k", full)
    model = create_backbone(TINY, pretrained=True)
    assert all(torch.equal(v, full[k]) for k, v in model.state_dict().items())
    feats = create_backbone(TINY, pretrained=True, features_only=True)
    assert all(torch.equal(v, full[k]) for k, v in feats.state_dict().items())


# --------------------------------------------------------------------------- weights=PATH


def _save(path, state):
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("filename", "wrap"),
    [
        ("w.safetensors", lambda sd: sd),
        ("w.pth", lambda sd: sd),  # with the 1000-class classifier
        ("w.pt", lambda sd: {k: v for k, v in sd.items() if not k.startswith("classifier.")}),
        ("w.ckpt", lambda sd: {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 3}),
        ("w.bin", lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}),
    ],
)
def test_weights_file_round_trip(tmp_path, offline_empty_cache, filename, wrap):
    full = _tiny_full_state_dict()
    source = timm.create_model(TINY, num_classes=0)
    source.load_state_dict(full, strict=False)
    path = _save(tmp_path / filename, wrap(full))
    model = create_backbone(TINY, pretrained=True, weights=path)
    assert torch.equal(_features(model), _features(source))
    feats = create_backbone(TINY, features_only=True, weights=str(path))
    assert all(torch.equal(v, full[k]) for k, v in feats.state_dict().items())


def test_weights_of_another_architecture_are_rejected(tmp_path):
    path = _save(tmp_path / "tiny.safetensors", _tiny_full_state_dict())
    match = (r"model\.weights='.*tiny\.safetensors' does not fit model\.name='efficientnet_b0'"
             r".*conv_stem\.weight: file.*looks like test_efficientnet")
    with pytest.raises(ValueError, match=match):
        create_backbone("efficientnet_b0", weights=path)


def test_weights_with_a_wrong_shape_are_rejected(tmp_path):
    state = _tiny_full_state_dict()
    state["conv_head.weight"] = torch.zeros(7, 3, 1, 1)
    path = _save(tmp_path / "bad.pth", state)
    with pytest.raises(ValueError, match=r"bad\.pth.*shape mismatches \(1\): conv_head\.weight: "
                       r"file \(7, 3, 1, 1\) vs model \(256, 64, 1, 1\)"):
        create_backbone(TINY, weights=path)
    del state["conv_head.weight"]
    _save(path, state)
    with pytest.raises(ValueError, match=r"bad\.pth.*missing keys \(1\): conv_head\.weight"):
        create_backbone(TINY, features_only=True, weights=path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _tiny_full_state_dict(), "extra": _Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.pth.* holds pickled Python objects.*weights_only=True"):
        create_backbone(TINY, weights=path)


def test_bad_weights_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.weights='.*missing\.pth': no such file"):
        create_backbone(TINY, weights=tmp_path / "missing.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unsupported extension '\.npz'.*\.safetensors, \.pth"):
        create_backbone(TINY, weights=tmp_path / "w.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"junk\.safetensors' is not a readable \.safetensors state dict"):
        create_backbone(TINY, weights=tmp_path / "junk.safetensors")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match=r"empty\.pth' holds no state dict \(found \['epoch'\]\)"):
        create_backbone(TINY, weights=tmp_path / "empty.pth")
