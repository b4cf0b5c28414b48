"""The model card (export/README.md, timm's card format) and mode=push (issue 11, must-shows 5 and 6):
the card's usage snippet run against the export gives the module's logits; with no network, push fails
in seconds saying how to push later, and never touches the network in these tests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from tests.conftest import TINY, compose_cfg

from b4transfer.data.images import load_rgb
from b4transfer.data.transforms import build_transforms
from b4transfer.errors import UserError
from b4transfer.export.card import model_stats
from b4transfer.modes import run
from b4transfer.tasks import load_module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import make_image_folder

    root = tmp_path_factory.mktemp("card")
    images = make_image_folder(root / "images", per_class=6, size=32)
    cfg = compose_cfg(
        *TINY, "data=folder", f"data.root={images}", "data.image_size=32", f"run_dir={root / 'run'}"
    )
    return run(cfg), images


def _snippets(card: str) -> dict[str, str]:
    """The python block under each ``### <title>`` of the card."""
    return dict(re.findall(r"### ([^\n]+)\n```python\n(.*?)```", card, flags=re.S))


def test_the_card_renders_in_timm_s_format_with_measured_stats_and_this_run(trained):
    summary, _ = trained
    card = (Path(summary["export_dir"]) / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "timm" and {"image-classification", "timm"} <= set(front["tags"])
    assert front["license"] == "apache-2.0" and front["datasets"] == ["images"]
    stats = summary["model_card"]["stats"]
    model = timm.create_model("test_efficientnet", num_classes=3)
    assert stats["train"]["params_m"] == round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    assert f"  - GMACs: {stats['train']['gmacs']}" in card and "Image size: train = 32 x 32" in card
    for section in (
        "## Model Details",
        "## Metrics",
        "val/acc1",
        "Export parity",
        "Calibration: temperature",
        "## Recipe",
        "### Feature Map Extraction",
        "### Image Embeddings",
    ):
        assert section in card, section


def test_the_card_s_usage_snippets_run_against_the_export_and_give_the_module_s_logits(trained, monkeypatch):
    """Must-show 5."""
    summary, images = trained
    export = Path(summary["export_dir"])
    snippets = _snippets((export / "README.md").read_text())
    image = sorted(images.rglob("*.png"))[0]
    monkeypatch.chdir(export)  # EXPORT = "." in the snippet
    scope: dict = {}
    exec(snippets["Image Classification"].replace('"image.jpg"', repr(str(image))), scope)
    module = load_module(summary["best_checkpoint"])
    _, eval_tf = build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])
    with torch.no_grad():
        expected = module(eval_tf(load_rgb(image)).unsqueeze(0))
    assert torch.allclose(scope["logits"], expected, atol=1e-5)
    temperature = module.hparams["calibration"]["temperature"]
    assert torch.allclose(scope["probs"], (expected / temperature).softmax(-1), atol=1e-5)
    exec(snippets["Feature Map Extraction"], scope)
    assert [f.shape[1] for f in scope["feature_maps"]] == [i["num_chs"] for i in module.backbone.feature_info]
    exec(snippets["Image Embeddings"], scope)
    with torch.no_grad():
        assert torch.allclose(
            scope["embedding"], module.backbone(eval_tf(load_rgb(image)).unsqueeze(0)), atol=1e-5
        )


def test_b4_stats_match_timm_s_model_card():
    """efficientnet_b4.ra2_in1k's card: 19.3 M params, 3.1 GMACs, 34.8 M activations at 320."""
    stats = model_stats(timm.create_model("efficientnet_b4"), 320)
    assert stats == {"params_m": 19.34, "gmacs": 3.06, "activations_m": 34.76, "image_size": 320}


def _push(tmp_path, export, *extra):
    return compose_cfg(
        *TINY,
        "mode=push",
        "push.repo_id=someone/cells",
        f"push.dir={export}",
        f"run_dir={tmp_path / 'push'}",
        *extra,
    )


def _no_upload(monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the test must not reach the Hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)


def test_push_without_network_fails_in_seconds_saying_how_to_push_later(trained, tmp_path, monkeypatch):
    """Must-show 6: offline (HF_HUB_OFFLINE, as in every test), and with the endpoint refusing."""
    import huggingface_hub.constants as hf_constants

    summary, _ = trained
    export = summary["export_dir"]
    _no_upload(monkeypatch)
    later = (
        rf"nothing was uploaded\. Push later, with a network: python run\.py mode=push "
        rf"push\.repo_id=someone/cells push\.dir={re.escape(export)} \(or huggingface-cli upload"
    )
    start = time.monotonic()
    with pytest.raises(
        UserError, match=r"cannot reach the Hugging Face Hub \(HF_HUB_OFFLINE is set\); " + later
    ):
        run(_push(tmp_path, export))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed local port: refused at once
    with pytest.raises(
        UserError, match=r"\(http://127\.0\.0\.1:9 could not be reached \(gave up after .*\); " + later
    ):
        run(_push(tmp_path, export, "push.timeout=2"))
    assert time.monotonic() - start < 10
    assert not (tmp_path / "push" / "summary.json").exists()
    assert os.environ.get("HF_ENDPOINT") == "http://127.0.0.1:9"


def test_push_uploads_the_export_folder(trained, tmp_path, monkeypatch):
    import huggingface_hub

    summary, _ = trained
    calls = []
    push_module = sys.modules["b4transfer.modes.push"]  # (b4transfer.modes.push is also the function)
    monkeypatch.setattr(push_module, "hub_unreachable_reason", lambda timeout: None)
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: calls.append(("repo", repo, kw))
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "upload_folder",
        lambda self, **kw: calls.append(("upload", kw)) or "https://hub/commit/1",
    )
    out = run(_push(tmp_path, summary["export_dir"]))
    assert calls[0] == ("repo", "someone/cells", {"private": True, "exist_ok": True})
    assert calls[1][1]["folder_path"] == summary["export_dir"] and calls[1][1]["repo_id"] == "someone/cells"
    assert {"README.md", "config.json", "model.safetensors"} <= set(out["files"])
    assert json.loads((tmp_path / "push" / "summary.json").read_text())["url"] == "https://hub/commit/1"


def test_push_refuses_bad_settings_in_one_line(tmp_path):
    with pytest.raises(
        UserError, match=r"push\.repo_id=None is not a Hub repository; pass push\.repo_id=<user>/<name>"
    ):
        run(compose_cfg(*TINY, "mode=push", f"run_dir={tmp_path / 'a'}"))
    with pytest.raises(
        UserError, match=r"push\.dir='.*nowhere' holds no config\.json; pass the export folder"
    ):
        run(
            compose_cfg(
                *TINY,
                "mode=push",
                "push.repo_id=a/b",
                f"push.dir={tmp_path / 'nowhere'}",
                f"run_dir={tmp_path / 'b'}",
            )
        )


def _card_and_config(export: Path) -> tuple[str, dict, dict]:
    card = (export / "README.md").read_text()
    return card, yaml.safe_load(card.split("---")[1]), json.loads((export / "config.json").read_text())


def test_a_random_init_run_s_card_and_config_say_so(trained):
    summary, _ = trained  # model=test_efficientnet: model.pretrained=false, no model.weights
    card, front, config = _card_and_config(Path(summary["export_dir"]))
    assert config["weights_origin"] == {"source": "random"}
    assert "tag" not in config["pretrained_cfg"]  # no "r160_in1k": those weights were never loaded
    assert "`test_efficientnet` trained with b4transfer on `images` from random initialisation" in card
    assert "fine-tuned" not in card and "base_model" not in front
    assert "- **Initial weights:** random initialisation (no pretrained weights)" in card


def test_a_local_weights_file_run_names_the_file_and_its_digest(tmp_path):
    from safetensors.torch import save_file
    from tests.conftest import make_image_folder

    weights = tmp_path / "start.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), str(weights))
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    images = make_image_folder(tmp_path / "images", per_class=6, size=32)
    summary = run(compose_cfg(*TINY, "data=folder", f"data.root={images}", "data.image_size=32",
                              f"model.weights={weights}", "export.parity=false", "errors.enabled=false",
                              f"run_dir={tmp_path / 'run'}"))
    card, front, config = _card_and_config(Path(summary["export_dir"]))
    assert config["weights_origin"] == {"source": "file", "file": str(weights.resolve()), "sha256": sha}
    assert "tag" not in config["pretrained_cfg"] and "base_model" not in front
    assert (f"`test_efficientnet` fine-tuned with b4transfer on `images` from the local weights file "
            f"`start.safetensors`, sha256 `{sha[:12]}…`") in card


def test_hub_weights_are_named_by_their_tag_in_the_card_and_config(tmp_path):
    from b4transfer.backbone.origin import weights_origin
    from b4transfer.tasks.classification import ClassificationModule
    from b4transfer.tasks.classification.card import write_card
    from b4transfer.tasks.classification.export import export_classifier_timm

    model = {"name": "test_efficientnet", "pretrained": False}
    module = ClassificationModule(class_names=["a", "b"], model=model, data={"image_size": 32})
    # what a model.pretrained=true run records (its download is not possible offline); the tag is timm's
    # default for a name without one
    module.hparams["weights_origin"] = weights_origin({"name": "test_efficientnet", "pretrained": True})
    export_classifier_timm(module, tmp_path / "export", checkpoint=None)
    write_card(compose_cfg(*TINY), module, tmp_path / "export", {})
    card, front, config = _card_and_config(tmp_path / "export")
    assert config["weights_origin"] == {"source": "hub", "name": "test_efficientnet.r160_in1k",
                                        "tag": "r160_in1k", "hf_hub_id": "timm/test_efficientnet.r160_in1k"}
    assert config["pretrained_cfg"]["tag"] == "r160_in1k"
    assert front["base_model"] == "timm/test_efficientnet.r160_in1k"
    assert ("`test_efficientnet` fine-tuned with b4transfer on `demo_splits` from timm's pretrained "
            "`test_efficientnet.r160_in1k` weights (`timm/test_efficientnet.r160_in1k`)") in card
