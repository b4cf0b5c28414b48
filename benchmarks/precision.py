"""Training throughput of EfficientNet-B4 per precision (32 / bf16-mixed / 16-mixed), images per second.

    python benchmarks/precision.py --device cuda --batch-size 32 --image-size 320 --steps 30
    python benchmarks/precision.py --device cpu --batch-size 8 --image-size 128 --steps 5 \
        --precisions 32-true bf16-mixed

Times full training steps (forward, loss, backward, AdamW step) on a synthetic batch after warm-up
steps, with the autocast / GradScaler setup Lightning uses for each ``precision=`` choice. Writes
``--out`` (JSON) and prints a markdown table for BENCHMARKS.md. Random init: no download.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch

AMP = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def measure(
    precision: str,
    *,
    model_name: str = "efficientnet_b4",
    device: str = "cuda",
    batch_size: int = 32,
    image_size: int = 320,
    steps: int = 20,
    warmup: int = 5,
    channels_last: bool = False,
) -> dict:
    """Images/s over ``steps`` timed training steps at ``precision`` (a key of ``AMP``)."""
    if precision not in AMP:
        raise ValueError(f"precision={precision!r}; choose one of {', '.join(AMP)}.")
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model(model_name, pretrained=False, num_classes=10).to(
        device, memory_format=memory_format
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")
    x = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,), device=device)
    dtype = AMP[precision]

    def step() -> float:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    sync()
    seconds = time.perf_counter() - start
    return {
        "precision": precision,
        "model": model_name,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "batch_size": batch_size,
        "image_size": image_size,
        "channels_last": channels_last,
        "images_per_s": batch_size * steps / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        "finite_loss": all(torch.isfinite(torch.tensor(losses))),
    }


def table(rows: list[dict]) -> str:
    base = next((r["images_per_s"] for r in rows if r["precision"] == "32-true"), None)
    lines = [
        "| device | model | batch | size | channels_last | precision | images/s | vs 32 | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        lines.append(
            f"| {r['device']} | {r['model']} | {r['batch_size']} | {r['image_size']} | "
            f"{r['channels_last']} | {r['precision']} | {r['images_per_s']:.1f} | {ratio} | {mem} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="efficientnet_b4")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--precisions", nargs="+", default=list(AMP))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/precision.json"))
    args = parser.parse_args()
    rows = [
        measure(
            p,
            model_name=args.model,
            device=args.device,
            batch_size=args.batch_size,
            image_size=args.image_size,
            steps=args.steps,
            warmup=args.warmup,
            channels_last=args.channels_last,
        )
        for p in args.precisions
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
