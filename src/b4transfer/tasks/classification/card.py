"""``export/README.md``: a Hugging Face model card in the format of timm's own cards (YAML front matter,
model details with measured stats, usage with plain timm), plus this run's metrics, export parity,
calibration and recipe."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from timm.models import split_model_name_tag

from b4transfer.backbone.origin import describe_origin
from b4transfer.config import plain
from b4transfer.export.card import model_stats
from b4transfer.export.timm_format import atomic_write, timm_classifier

log = logging.getLogger(__name__)

MARKER = "<!-- written by b4transfer: regenerated on every export -->"

USAGE = """## Model Usage

### Image Classification
```python
import json

import timm
import torch
from PIL import Image

EXPORT = "."  # this folder (config.json, model.safetensors)
IMAGE = "image.jpg"
config = json.load(open(f"{EXPORT}/config.json"))
# timm reads config.json (architecture, classes, data config) and model.safetensors from the folder
model = timm.create_model(f"local-dir:{EXPORT}", pretrained=True).eval()
data_config = timm.data.resolve_data_config({}, model=model, use_test_size=True)
transform = timm.data.create_transform(**data_config)

img = Image.open(IMAGE).convert("RGB")
with torch.no_grad():
    logits = model(transform(img).unsqueeze(0))
calibration = config.get("calibration") or {}
if config.get("multi_label"):
    probs = logits.sigmoid()  # each label on at its calibrated threshold (calibration["thresholds"])
else:
    probs = (logits / calibration.get("temperature", 1.0)).softmax(-1)  # calibrated probabilities
top = probs.topk(min(5, config["num_classes"]))
for p, i in zip(top.values[0].tolist(), top.indices[0].tolist()):
    print(config["label_names"][i], round(p, 4))
```

### Feature Map Extraction
```python
model = timm.create_model(f"local-dir:{EXPORT}", pretrained=True, features_only=True).eval()
with torch.no_grad():
    feature_maps = model(transform(img).unsqueeze(0))
for f in feature_maps:
    print(f.shape)  # strides 2, 4, 8, 16, 32
```

### Image Embeddings
```python
model = timm.create_model(f"local-dir:{EXPORT}", pretrained=True, num_classes=0).eval()  # pooled features
with torch.no_grad():
    embedding = model(transform(img).unsqueeze(0))  # (1, num_features)
```

With `timm.create_model(config["architecture"], pretrained=True, num_classes=k,
pretrained_cfg_overlay=dict(file=".../model.safetensors", num_classes=k))` instead, pass `num_classes` in the
overlay too (else timm drops the exported classifier) and the data config as well (else timm preprocesses
at the architecture's default size).
"""


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def _dataset(cfg: DictConfig) -> str:
    data = cfg.get("data") or {}
    for key in ("root", "csv"):
        if data.get(key):
            return Path(str(data.get(key))).name
    target = str((data.get("source") or {}).get("_target_", "custom"))
    return target.rsplit(".", 1)[-1]


def _metrics(summary: dict[str, Any]) -> str:
    metrics = {k: v for k, v in (summary.get("metrics") or {}).items() if k.startswith("val/")}
    out = [
        _table(
            ["metric (validation, best checkpoint)", "value"],
            [(k, round(v, 4)) for k, v in sorted(metrics.items())],
        )
        if metrics
        else "No validation metrics (exported with `mode=export`)."
    ]
    parity = summary.get("parity")
    if parity:
        rows = [
            (fmt, r.get("value", r.get("error")), r.get("diff", ""), r.get("within_tolerance", ""))
            for fmt, r in parity["formats"].items()
        ]
        out += [
            "",
            f"Export parity ({parity['metric']} on the validation split, each artefact through its "
            f"own runtime; tolerance {parity['tolerance']}):",
            "",
            _table(["format", "value", "difference", "within tolerance"], rows),
        ]
    calibration = summary.get("calibration")
    if calibration and "temperature" in calibration:
        out += [
            "",
            f"Calibration: temperature {calibration['temperature']} (ECE {calibration['ece_before']} "
            f"-> {calibration['ece_after']} on the validation split), in `config.json` -> `calibration`.",
        ]
    elif calibration:
        out += ["", f"Calibration: per-class thresholds {calibration.get('thresholds')} (validation F1)."]
    return "\n".join(out)


def _recipe(cfg: DictConfig, summary: dict[str, Any]) -> str:
    optim, finetune = plain(cfg.get("optim")) or {}, plain(cfg.get("finetune")) or {}
    rows = [
        ("optimizer", f"{optim.get('name')} lr {optim.get('lr')} weight decay {optim.get('weight_decay')}"),
        ("schedule", (plain(cfg.get("scheduler")) or {}).get("name") or "constant"),
        ("fine-tuning", str(finetune.get("_target_", finetune.get("name", "full"))).rsplit(".", 1)[-1]),
        ("epochs / steps", f"{summary.get('epochs', '-')} / {summary.get('global_step', '-')}"),
        ("batch size", (cfg.get("data") or {}).get("batch_size")),
        ("precision", summary.get("precision", "-")),
        ("EMA", (cfg.get("ema") or {}).get("enabled")),
    ]
    return _table(["setting", "value"], rows)


def _distillation(summary: dict[str, Any]) -> list[str]:
    """The card's "Distillation" section of a ``mode=distill`` run (none otherwise)."""
    report = summary.get("distillation")
    if not report:
        return []
    rows = [
        ("teacher", f"`{report['teacher_model']}` from `{report['teacher']}`"),
        ("loss", f"{report['alpha']} x T^2 x KL(teacher, student) at T = {report['temperature']} "
                 f"+ {round(1 - report['alpha'], 4)} x the hard-label loss"),
        ("teacher logits", report["teacher_logits"]),
    ]
    pseudo = report.get("pseudo_labels")
    if pseudo:
        rows.append(("pseudo-labels", f"{pseudo['used']} of {pseudo['images']} unlabelled images at teacher "
                                      f"probability >= {pseudo['threshold']}"))
    return ["", "## Distillation", "", "This model is a student distilled from a teacher (mode=distill).", "",
            _table(["setting", "value"], rows)]


def write_card(cfg: DictConfig, module, out_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``out_dir/README.md`` (never over a README.md b4transfer did not write)."""
    path = Path(out_dir) / "README.md"
    if path.exists() and MARKER not in path.read_text(errors="replace"):
        log.warning("%s exists and was not written by b4transfer: the model card is not written.", path)
        return {"skipped": f"{path} exists"}
    model = timm_classifier(module.backbone, module.head.fc)
    sizes = {
        name: int(module.data_config[key]["input_size"][-1])
        for name, key in (("train", "train"), ("test", "eval"))
    }
    stats = {name: model_stats(model, size) for name, size in sizes.items()}
    dataset, origin = _dataset(cfg), module.hparams.get("weights_origin") or {}
    arch = split_model_name_tag(module.hparams.model["name"])[0]
    hub = origin.get("source") == "hub"
    base = f"base_model: {origin.get('hf_hub_id') or 'timm/' + origin['name']}\n" if hub else ""
    front = (
        f"---\ntags:\n- image-classification\n- timm\n- b4transfer\nlibrary_name: timm\nlicense: "
        f"{(cfg.get('export') or {}).get('license', 'apache-2.0')}\ndatasets:\n- {dataset}\n{base}---\n"
    )
    details = [
        f"# Model card for {Path(str(out_dir)).parent.name or 'this export'}",
        MARKER,
        "",
        f"`{arch}` {'fine-tuned' if origin.get('source') != 'random' else 'trained'} with b4transfer on "
        f"`{dataset}` from {describe_origin(origin)}: {len(module.class_names)} classes "
        f"({', '.join(module.class_names[:20])}{', ...' if len(module.class_names) > 20 else ''})"
        f"{', multi-label' if module.head.multi_label else ''}.",
        "",
        "## Model Details",
        "- **Model Type:** Image classification / feature backbone",
        f"- **Initial weights:** {describe_origin(origin)}; `config.json` -> `weights_origin`",
        "- **Model Stats:**",
        f"  - Params (M): {stats['train']['params_m']}",
        f"  - GMACs: {stats['train']['gmacs']}",
        f"  - Activations (M): {stats['train']['activations_m']}",
        f"  - Image size: train = {sizes['train']} x {sizes['train']}, "
        f"test = {sizes['test']} x {sizes['test']}",
        f"- **Dataset:** {dataset}",
        "- **Original:** https://github.com/huggingface/pytorch-image-models",
        "",
        _table(
            ["input", "params (M)", "GMACs", "activations (M)"],
            [
                (f"{s['image_size']} ({k})", s["params_m"], s["gmacs"], s["activations_m"])
                for k, s in stats.items()
            ],
        ),
        "",
        "Measured on the exported model (GMACs: `torch.utils.flop_counter`; activations: outputs of "
        "every convolution and linear layer).",
        "",
        "## Metrics",
        "",
        _metrics(summary),
        "",
        "## Recipe",
        "",
        _recipe(cfg, summary),
        *_distillation(summary),
        "",
        USAGE,
    ]
    atomic_write(path, lambda p: p.write_text(front + "\n".join(details)))
    return {"path": str(path), "stats": stats}
