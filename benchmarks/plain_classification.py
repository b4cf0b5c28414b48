"""A naive plain-PyTorch classification loop: the baseline of the time-to-accuracy benchmark.

Written out on purpose (no Lightning, no b4transfer): what a user writes first. ``timm.create_model`` with
the real ImageNet weights loaded from a file (a new ``num_classes`` head), AdamW at a constant 1e-3 (torch's
default weight decay), fp32, NCHW, plain cross-entropy, no EMA, no schedule; torchvision
``RandomResizedCrop`` + horizontal flip for training and timm's eval transform at the same size for
validation; ``ImageFolder`` data (``DATA/train/<class>/*``, ``DATA/val/<class>/*``), as many DataLoader
workers as the library's default (one less than this process's CPUs, at most 8).

After every epoch: validation top-1 accuracy and ``elapsed_s``, the wall seconds since the process
started (imports and model creation included), taken the same way as the library's ``time/elapsed_s``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

RECIPE = {
    "optimizer": "AdamW",
    "lr": 1e-3,
    "weight_decay": "torch default (0.01)",
    "schedule": "constant",
    "loss": "cross-entropy",
    "precision": "fp32",
    "memory_format": "NCHW",
    "train_transform": "RandomResizedCrop + RandomHorizontalFlip",
    "eval_transform": "timm eval",
}
_IMPORTED = time.perf_counter()


def seconds_since_process_start() -> float:
    """As ``b4transfer.training.callbacks.seconds_since_process_start`` (copied: this loop imports no
    b4transfer)."""
    try:
        with open("/proc/self/stat") as f:  # field 22, starttime, in clock ticks after boot
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED


def default_workers() -> int:
    """The library's default ``data.num_workers`` on one device."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(8, max(0, cpus - 1))


def folders(root: Path, train_transform, eval_transform):
    """``ImageFolder`` train and val sets with the train set's class indices."""
    train = datasets.ImageFolder(str(root / "train"), transform=train_transform)
    val = datasets.ImageFolder(str(root / "val"), transform=eval_transform)
    missing = set(val.classes) - set(train.classes)
    assert not missing, f"val classes without training images: {sorted(missing)}"
    val.samples = [(path, train.class_to_idx[val.classes[t]]) for path, t in val.samples]
    val.targets = [t for _, t in val.samples]
    return train, val


@torch.no_grad()
def evaluate(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def train_plain(
    data_root,
    *,
    weights,
    model_name: str,
    image_size: int,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    workers: int | None = None,
) -> dict:
    """Train with :data:`RECIPE`; per-epoch val top-1 and elapsed seconds since the process started."""
    root = Path(data_root)
    workers = default_workers() if workers is None else workers
    train_start = seconds_since_process_start()
    torch.manual_seed(seed)
    num_classes = len(datasets.folder.find_classes(str(root / "train"))[0])
    model = timm.create_model(
        model_name,
        pretrained=True,
        num_classes=num_classes,
        pretrained_cfg_overlay=dict(file=str(weights), num_classes=1000),
    )
    cfg = resolve_data_config({}, model=model)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    eval_tf = create_transform(**{**cfg, "input_size": (3, image_size, image_size)})
    train, val = folders(root, train_tf, eval_tf)
    loader_args = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    train_loader = DataLoader(
        train,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(train) % batch_size == 1,  # no lone image in a BatchNorm batch
        **loader_args,
    )
    val_loader = DataLoader(val, shuffle=False, **loader_args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for epoch in range(epochs):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc1 = evaluate(model, val_loader)
        history.append({"epoch": epoch, "acc1": acc1, "elapsed_s": round(seconds_since_process_start(), 2)})
    return {
        "epochs": history,
        "train_start_s": round(train_start, 2),
        "wall_s": history[-1]["elapsed_s"] if history else round(seconds_since_process_start(), 2),
        "batch_size": batch_size,
        "workers": workers,
        "train_images": len(train),
        "val_images": len(val),
        "recipe": RECIPE,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.plain_classification DATA --weights W --model M --image-size S --epochs E
    --seed N [--batch-size B]``: prints ``RESULT {json}`` on its last line."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=32, help="the library's default data.batch_size")
    args = ap.parse_args(argv)
    result = train_plain(
        args.data,
        weights=args.weights,
        model_name=args.model,
        image_size=args.image_size,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
