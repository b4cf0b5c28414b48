"""A plain PyTorch detection fine-tuning loop: the baseline the library's detection training must match.

Written out on purpose (no Lightning, no b4transfer): torchvision's ``RetinaNet`` over torchvision's
``FeaturePyramidNetwork`` (+ P6/P7) on a timm ``features_only`` body (stride 8/16/32 maps), the
standard detection fine-tuning recipe — AdamW with backbone LR 1e-4 and 1e-3 elsewhere, weight decay
1e-4, 100-step linear warm-up then cosine, the body's BatchNorm in eval mode, horizontal flips only,
gradient-norm clipping at 10, batch 4 — and COCO mAP from torchmetrics in original-image pixels.

Images are letterboxed to ``image_size`` (longer side resized, bottom/right padded), like the library
does; only the flip is random, so every image is letterboxed once and kept in memory.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

RECIPE = {
    "lr": 1e-3,
    "backbone_lr": 1e-4,
    "weight_decay": 1e-4,
    "warmup_steps": 100,
    "clip": 10.0,
    "batch_size": 4,
    "fpn_channels": 128,
    "hflip": 0.5,
}


def read_coco_split(root: Path, split: str) -> tuple[list[dict], list[str]]:
    """``root/annotations/instances_<split>.json`` + ``root/<split>/``: images, boxes (xyxy), labels."""
    data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    per_image = {
        im["id"]: {"file": root / split / im["file_name"], "boxes": [], "labels": []} for im in data["images"]
    }
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        per_image[a["image_id"]]["boxes"].append([x, y, x + w, y + h])
        per_image[a["image_id"]]["labels"].append(label_of[a["category_id"]])
    return [per_image[k] for k in sorted(per_image)], [c["name"] for c in cats]


def letterbox(item: dict, size: int, fill: tuple[int, ...]) -> tuple[torch.Tensor, dict]:
    """A ``size`` x ``size`` float canvas (0..1) and the target in canvas pixels, plus the scale back."""
    image = Image.open(item["file"]).convert("RGB")
    ratio = size / max(image.size)
    w, h = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(image.resize((w, h), Image.BICUBIC), (0, 0))
    pixels = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255
    scale = torch.tensor([w / image.width, h / image.height] * 2)
    boxes = torch.tensor(item["boxes"], dtype=torch.float32).reshape(-1, 4)
    return pixels, {
        "boxes": boxes * scale,
        "labels": torch.tensor(item["labels"], dtype=torch.int64),
        "scale": scale,
        "orig_boxes": boxes,
    }


class TimmFPN(nn.Module):
    """timm ``features_only`` body -> FPN (+P6/P7): an ``out_channels`` backbone for torchvision."""

    def __init__(self, body: nn.Module, channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), channels, extra_blocks=LastLevelP6P7(channels, channels)
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(self.body(x))))


def build(model_name: str, weights: str, num_classes: int, image_size: int, channels: int) -> RetinaNet:
    body = timm.create_model(
        model_name,
        pretrained=True,
        features_only=True,
        out_indices=(2, 3, 4),
        pretrained_cfg_overlay=dict(file=weights, num_classes=1000),
    )
    cfg = body.pretrained_cfg
    strides = [8, 16, 32, 64, 128]
    anchors = AnchorGenerator(
        tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides),
        ((0.5, 1.0, 2.0),) * len(strides),
    )
    return RetinaNet(
        TimmFPN(body, channels),
        num_classes,
        anchor_generator=anchors,
        min_size=image_size,
        max_size=image_size,
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
    )


@torch.no_grad()
def evaluate(model: RetinaNet, val: list, batch_size: int, device: str = "cpu") -> dict[str, float]:
    model.eval()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    for i in range(0, len(val), batch_size):
        chunk = val[i : i + batch_size]
        outs = [{k: v.cpu() for k, v in o.items()} for o in model([x.to(device) for x, _ in chunk])]
        metric.update(
            [
                {"boxes": o["boxes"] / t["scale"], "scores": o["scores"], "labels": o["labels"]}
                for o, (_, t) in zip(outs, chunk)
            ],
            [{"boxes": t["orig_boxes"], "labels": t["labels"]} for _, t in chunk],
        )
    values = metric.compute()
    return {"map": float(values["map"]), "map_50": float(values["map_50"])}


def train_plain(
    data_root: str | Path,
    *,
    weights: str,
    model_name: str,
    image_size: int,
    epochs: int,
    seed: int,
    recipe: dict | None = None,
    device: str = "cpu",
) -> dict:
    """Train with :data:`RECIPE` on ``device`` (fp32 there too, as a plain loop runs); returns per-epoch
    validation ``map`` / ``map_50`` and the wall time."""
    r = {**RECIPE, **(recipe or {})}
    root = Path(data_root)
    torch.manual_seed(seed)
    train_items, names = read_coco_split(root, "train")
    val_items, _ = read_coco_split(root, "val")
    model = build(model_name, weights, len(names), image_size, r["fpn_channels"]).to(device)
    fill = tuple(round(255 * m) for m in model.backbone.body.pretrained_cfg["mean"])
    train = [letterbox(it, image_size, fill) for it in train_items]
    val = [letterbox(it, image_size, fill) for it in val_items]
    body_params = list(model.backbone.body.parameters())
    body_ids = {id(p) for p in body_params}
    rest = [p for p in model.parameters() if id(p) not in body_ids]
    opt = torch.optim.AdamW(
        [{"params": body_params, "lr": r["backbone_lr"]}, {"params": rest, "lr": r["lr"]}],
        weight_decay=r["weight_decay"],
    )
    steps_per_epoch = math.ceil(len(train) / r["batch_size"])
    total = steps_per_epoch * epochs

    def lr_factor(step: int) -> float:
        if step < r["warmup_steps"]:
            return (step + 1) / r["warmup_steps"]
        return 0.5 * (1 + math.cos(math.pi * (step - r["warmup_steps"]) / max(1, total - r["warmup_steps"])))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    history, start = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        model.backbone.body.apply(
            lambda m: m.eval() if isinstance(m, nn.modules.batchnorm._BatchNorm) else None
        )
        order = torch.randperm(len(train)).tolist()
        for i in range(0, len(order), r["batch_size"]):
            images, targets = [], []
            for j in order[i : i + r["batch_size"]]:
                x, t = train[j]
                boxes = t["boxes"]
                if torch.rand(()) < r["hflip"]:
                    x = x.flip(-1)
                    boxes = torch.stack(
                        [image_size - boxes[:, 2], boxes[:, 1], image_size - boxes[:, 0], boxes[:, 3]], 1
                    )
                images.append(x.to(device))
                targets.append({"boxes": boxes.to(device), "labels": t["labels"].to(device)})
            loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
            opt.step()
            sched.step()
        history.append({"epoch": epoch, **evaluate(model, val, 8, device)})
    return {"epochs": history, "wall_s": round(time.perf_counter() - start, 1), "recipe": r}


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.plain_detection DATA --weights W --model M --image-size S --epochs E --seed N``:
    prints the result as JSON (one subprocess per run keeps runs apart and lets them run side by side)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--recipe", default="{}", help="JSON: RECIPE keys to change")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args(argv)
    result = train_plain(
        args.data,
        weights=args.weights,
        model_name=args.model,
        image_size=args.image_size,
        epochs=args.epochs,
        seed=args.seed,
        recipe=json.loads(args.recipe),
        device=args.device,
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
