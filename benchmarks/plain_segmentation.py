"""A plain PyTorch segmentation loop with segmentation_models_pytorch: the baseline the library must match.

Written out on purpose (no Lightning, no b4transfer): ``smp.FPN`` or ``smp.Unet`` with the timm encoder
``tu-<model>`` (the same timm weights, loaded from the same file), trained by the loop of SMP's own
examples — Adam at a constant 1e-4, cross-entropy with ignore index 255, batch 8, horizontal flips —
and mIoU from torchmetrics (per-class IoU over the whole split, mean over the classes that occur, as the
library computes it) after every epoch.

Data: the ``seg_folder`` layout (``images/{train,val}``, ``masks/{train,val}`` of class indices,
``classes.txt``). Images are letterboxed to ``image_size`` as the library's evaluation does (longer side
resized, bottom/right padded with the mean colour, the mask's padding 255); only the flip is random, so
every image is letterboxed once and kept in memory. Needs ``pip install segmentation-models-pytorch``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

RECIPE = {"lr": 1e-4, "weight_decay": 0.0, "batch_size": 8, "hflip": 0.5}
IGNORE = 255


def read_split(root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of ``images/<split>`` and ``masks/<split>`` (same stem)."""
    masks = {p.stem: p for p in (root / "masks" / split).glob("*.png")}
    return [(p, masks[p.stem]) for p in sorted((root / "images" / split).iterdir()) if p.stem in masks]


def letterbox(image_path: Path, mask_path: Path, size: int, fill: tuple[int, ...]):
    """A ``size`` x ``size`` float canvas (0..1) and its int64 mask (padding ``IGNORE``)."""
    image = Image.open(image_path).convert("RGB")
    mask = Image.open(mask_path)
    ratio = size / max(image.size)
    w, h = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(image.resize((w, h), Image.BILINEAR), (0, 0))
    target = np.full((size, size), IGNORE, np.int64)
    target[:h, :w] = np.asarray(mask.resize((w, h), Image.NEAREST), np.int64)
    pixels = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255
    return pixels, torch.from_numpy(target)


def build(arch: str, model_name: str, weights: str | None, num_classes: int) -> torch.nn.Module:
    """``smp.FPN`` / ``smp.Unet`` on ``tu-<model_name>``, the encoder's weights from ``weights``."""
    import segmentation_models_pytorch as smp

    cls = {"fpn": smp.FPN, "unet": smp.Unet}[arch]
    model = cls(encoder_name=f"tu-{model_name.split('.')[0]}", encoder_weights=None, classes=num_classes)
    if weights:
        from safetensors.torch import load_file

        state = load_file(weights) if str(weights).endswith(".safetensors") else torch.load(weights)
        own = model.encoder.model.state_dict()
        missing = [k for k in own if k not in state]
        assert not missing, f"{weights} lacks encoder weights {missing[:3]}"
        model.encoder.model.load_state_dict({k: state[k] for k in own})
    return model


@torch.no_grad()
def evaluate(model, val, mean, std, num_classes: int, batch_size: int = 8) -> float:
    from torchmetrics.classification import MulticlassJaccardIndex

    model.eval()
    metric = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE, zero_division=math.nan)
    for i in range(0, len(val), batch_size):
        x = torch.stack([v[0] for v in val[i : i + batch_size]])
        y = torch.stack([v[1] for v in val[i : i + batch_size]])
        metric.update(model((x - mean) / std).argmax(1), y)
    return float(metric.compute().nanmean())


def train_plain(
    data_root,
    *,
    arch: str,
    weights,
    model_name: str,
    image_size: int,
    epochs: int,
    seed: int,
    recipe: dict | None = None,
) -> dict:
    """Train with :data:`RECIPE`; per-epoch validation mIoU, the median train step time, the wall time."""
    r = {**RECIPE, **(recipe or {})}
    root = Path(data_root)
    names = [n.strip() for n in (root / "classes.txt").read_text().splitlines() if n.strip()]
    torch.manual_seed(seed)
    model = build(arch, model_name, weights, len(names))
    cfg = model.encoder.model.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    fill = tuple(round(255 * m) for m in cfg["mean"])
    train = [letterbox(i, m, image_size, fill) for i, m in read_split(root, "train")]
    val = [letterbox(i, m, image_size, fill) for i, m in read_split(root, "val")]
    opt = torch.optim.Adam(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    history, step_s, start = [], [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train)).tolist()
        for i in range(0, len(order) - 1, r["batch_size"]):  # no lone last image (BatchNorm)
            t0 = time.perf_counter()
            xs, ys = zip(*(train[j] for j in order[i : i + r["batch_size"]]))
            x, y = torch.stack(xs), torch.stack(ys)
            flip = torch.rand(len(x)) < r["hflip"]
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            loss = F.cross_entropy(model((x - mean) / std), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_s.append(time.perf_counter() - t0)
        history.append({"epoch": epoch, "miou": evaluate(model, val, mean, std, len(names))})
    return {
        "epochs": history,
        "step_s": statistics.median(step_s[2:] or step_s),
        "wall_s": round(time.perf_counter() - start, 1),
        "recipe": r,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.plain_segmentation DATA --arch fpn --weights W --model M --image-size S
    --epochs E --seed N``: prints the result as JSON."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--arch", choices=("fpn", "unet"), default="fpn")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--model", required=True)
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--recipe", default="{}", help="JSON: RECIPE keys to change")
    args = ap.parse_args(argv)
    result = train_plain(
        args.data,
        arch=args.arch,
        weights=args.weights,
        model_name=args.model,
        image_size=args.image_size,
        epochs=args.epochs,
        seed=args.seed,
        recipe=json.loads(args.recipe),
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
