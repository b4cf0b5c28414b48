"""Training throughput per precision (32 / bf16-mixed / 16-mixed / auto), images per second.

    python benchmarks/precision.py --device cuda --batch-size 32 --image-size 320 --steps 30
    python benchmarks/precision.py --device cpu --batch-size 8 --image-size 128 --steps 5 \
        --precisions 32-true bf16-mixed
    # precision=auto against fp32, interleaved rounds (robust to load on a shared machine):
    OMP_NUM_THREADS=2 python benchmarks/precision.py --device cpu --model tf_efficientnet_lite0 \
        --image-size 224 --batch-size 16 --steps 4 --rounds 6 --precisions 32-true 32-true+cl auto
    OMP_NUM_THREADS=2 python benchmarks/precision.py --device cpu --task detection \
        --model tf_efficientnet_lite0 --image-size 256 --batch-size 4 --steps 4 --rounds 6 \
        --precisions 32-true auto

Times full training steps (forward, loss, backward, AdamW step) on a synthetic batch after warm-up
steps, with the autocast / GradScaler setup Lightning uses for each ``precision=`` choice. ``auto`` is
resolved by the library (:func:`b4transfer.training.devices.resolve_precision`: bf16-mixed + channels_last
where
the device computes bf16 natively, else 32-true; on CPUs with the depthwise convolutions in fp32); a
``+cl`` suffix adds channels_last weights and inputs to any choice (``--channels-last``: to all), ``+bf16dw``
keeps the depthwise convolutions in bf16. ``--task classification`` (default) times a plain timm
classifier with cross-entropy; ``--task detection`` the library's detection module (RetinaNet + FPN over
the timm body, ``--fpn-channels``) on synthetic boxes. With ``--rounds N`` the choices run interleaved,
``--steps`` steps each per round, and the table gives the median images/s and the median per-round ratio
to ``32-true``. Writes ``--out`` (JSON) and prints a markdown table for BENCHMARKS.md. Random init.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import timm
import torch

AMP = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
CHOICES = (*AMP, "auto")


def resolve(precision: str, device: str, channels_last: bool = False) -> tuple[str, bool, bool]:
    """``(Lightning precision, channels_last, fp32 depthwise)`` of a choice such as ``32-true``, ``auto``,
    ``32-true+cl``: the library's plan (:func:`b4transfer.training.devices.resolve_precision`), as a run uses
    it.
    ``+bf16dw`` leaves the depthwise convolutions in bf16 (what the plan avoids on CPUs)."""
    name, *suffixes = precision.split("+")
    if name not in CHOICES or not set(suffixes) <= {"cl", "bf16dw"}:
        raise ValueError(
            f"precision={precision!r}; choose one of {', '.join(CHOICES)}, optionally +cl and/or +bf16dw."
        )
    from b4transfer.training.devices import resolve_precision

    plan = resolve_precision({"precision": name, "accelerator": device.split(":")[0]})
    channels_last = channels_last or "cl" in suffixes or plan.channels_last
    return plan.used, channels_last, plan.fp32_depthwise and "bf16dw" not in suffixes


def _classifier(model_name: str, device: str, batch_size: int, image_size: int):
    model = timm.create_model(model_name, pretrained=False, num_classes=10).to(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def loss_fn(memory_format):
        return torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=memory_format)), y)

    return model, loss_fn


def _detector(model_name: str, device: str, batch_size: int, image_size: int, fpn_channels: int):
    from b4transfer.tasks.detection import DetectionModule

    module = DetectionModule(
        class_names=["a", "b", "c"],
        model={"name": model_name, "pretrained": False},
        data={"image_size": image_size},
        head={"detector": "retinanet", "fpn_channels": fpn_channels},
    ).to(device)
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for i in range(batch_size):
        images.append(torch.rand(3, image_size, image_size, generator=g).to(device))
        k = 1 + i % 4
        xy = torch.rand(k, 2, generator=g) * image_size * 0.6
        wh = (0.1 + 0.3 * torch.rand(k, 2, generator=g)) * image_size
        boxes = torch.cat([xy, (xy + wh).clamp(max=image_size)], 1)
        labels = torch.randint(0, 3, (k,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})

    def loss_fn(memory_format):  # the body's pre-hook makes the input channels_last when the weights are
        return sum(module(images, targets).values())

    return module, loss_fn


def setup(
    precision: str,
    *,
    task: str = "classification",
    model_name: str = "efficientnet_b4",
    device: str = "cuda",
    batch_size: int = 32,
    image_size: int = 320,
    channels_last: bool = False,
    fpn_channels: int = 128,
):
    """``(step, info)``: one training step at ``precision`` (returns its loss) and what it runs."""
    used, channels_last, fp32_dw = resolve(precision, device, channels_last)
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if task == "detection":
        model, loss_fn = _detector(model_name, device, batch_size, image_size, fpn_channels)
    else:
        model, loss_fn = _classifier(model_name, device, batch_size, image_size)
    if fp32_dw:  # as a run of the library: depthwise convolutions fp32 under bf16 autocast on a CPU
        from b4transfer.runtime.speed import fp32_depthwise

        fp32_depthwise(model)
    if channels_last:
        from b4transfer.runtime.speed import apply_speed_switches

        if task == "detection":
            apply_speed_switches(model, {}, channels_last=True)
        else:
            model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=used == "16-mixed" and device.startswith("cuda"))
    dtype = AMP[used] if device.startswith("cuda") or used != "16-mixed" else torch.bfloat16
    device_type = device.split(":")[0]

    def step() -> float:
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(memory_format)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    info = {
        "precision": precision,
        "used": used,
        "task": task,
        "model": model_name,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "batch_size": batch_size,
        "image_size": image_size,
        "channels_last": channels_last,
        "fp32_depthwise": fp32_dw,
    }
    return step, info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(precision: str, *, device: str = "cuda", steps: int = 20, warmup: int = 5, **kwargs) -> dict:
    """Images/s over ``steps`` timed training steps at ``precision`` (a key of ``CHOICES``, or ``+cl``)."""
    step, info = setup(precision, device=device, **kwargs)
    for _ in range(warmup):
        step()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        **info,
        "images_per_s": info["batch_size"] * steps / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        "finite_loss": all(torch.isfinite(torch.tensor(losses))),
    }


def compare(precisions: list[str], *, device: str, steps: int, rounds: int, warmup: int = 2, **kwargs):
    """The choices timed interleaved: ``rounds`` rounds of ``steps`` steps each (order flipping every
    round, after ``warmup`` steps each), median images/s and median per-round ratio to the first choice."""
    from benchmarks.common import interleaved

    setups = {p: setup(p, device=device, **kwargs) for p in precisions}
    losses = {p: [] for p in precisions}
    for p, (step, _) in setups.items():
        losses[p] += [step() for _ in range(warmup)]

    def block(p: str):
        def run() -> float:
            _sync(device)
            start = time.perf_counter()
            losses[p].extend(setups[p][0]() for _ in range(steps))
            _sync(device)
            return time.perf_counter() - start

        return run

    samples = interleaved({p: block(p) for p in precisions}, rounds=rounds, warmup=0)
    base = samples[precisions[0]]
    rows = []
    for p in precisions:
        info, s = setups[p][1], samples[p]
        rows.append({
            **info,
            "images_per_s": info["batch_size"] * steps / statistics.median(s),
            "ratio_vs_first": statistics.median([b / t for t, b in zip(s, base)]),
            "seconds_per_block": [round(x, 3) for x in s],
            "peak_memory_gib": None,
            "finite_loss": all(torch.isfinite(torch.tensor(losses[p]))),
            "first_losses": [round(x, 4) for x in losses[p][:warmup]],
        })
    return rows


def table(rows: list[dict]) -> str:
    base = next((r["images_per_s"] for r in rows if r["precision"] == "32-true"), None)
    lines = [
        "| device | task | model | batch | size | channels_last | precision | fp32 depthwise | images/s "
        "| vs 32 | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r.get("ratio_vs_first") or (r["images_per_s"] / base if base else None)
        ratio = f"{ratio:.2f}x" if ratio else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        used = r.get("used", r["precision"])
        shown = r["precision"] if r["precision"].split("+")[0] == used else f"{r['precision']} -> {used}"
        lines.append(
            f"| {r['device']} | {r.get('task', 'classification')} | {r['model']} | {r['batch_size']} | "
            f"{r['image_size']} | {r['channels_last']} | {shown} | {r.get('fp32_depthwise', False)} | "
            f"{r['images_per_s']:.1f} | {ratio} | "
            f"{mem} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--task", choices=("classification", "detection"), default="classification")
    parser.add_argument("--model", default="efficientnet_b4")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=0, help="interleave the choices over this many rounds")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--precisions", nargs="+", default=list(AMP))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/precision.json"))
    args = parser.parse_args()
    common = dict(
        task=args.task,
        model_name=args.model,
        device=args.device,
        batch_size=args.batch_size,
        image_size=args.image_size,
        channels_last=args.channels_last,
        fpn_channels=args.fpn_channels,
    )
    load = [round(x, 2) for x in os.getloadavg()]
    if args.rounds:
        rows = compare(args.precisions, steps=args.steps, rounds=args.rounds, warmup=args.warmup, **common)
    else:
        rows = [measure(p, steps=args.steps, warmup=args.warmup, **common) for p in args.precisions]
    record = {"load_average_start": load, "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "torch_threads": torch.get_num_threads(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record if args.rounds else rows, indent=2) + "\n")
    print(f"load average {load} -> {record['load_average_end']}, torch threads {torch.get_num_threads()}")
    print(table(rows))


if __name__ == "__main__":
    main()
