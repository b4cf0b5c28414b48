"""Scaling: images/s and peak memory vs batch size and image size, for inference and training.

Inference runs the library's fast path (the ``predict.*`` defaults: bf16 autocast where native,
channels_last) on the module's network; training runs forward + loss + backward + AdamW step on
the same network in fp32. Peak memory is the process's peak RSS while the configuration runs
(sampled every 5 ms; ``rss_increase_mib`` is the rise above the RSS before it; configurations run
from the smallest to the largest, so the rise is what the larger one adds), and on CUDA
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib

import torch

from benchmarks.common import Result, median, peak_memory, timed


def _inference_step(module, x, bf16: bool):
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)

    @torch.no_grad()
    def step() -> None:
        with autocast:
            module(x)

    return step


def _train_step(module, x, y, bf16: bool):
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _measure(make_step, batch: int, reps: int) -> dict:
    with peak_memory() as mem:
        step = make_step()
        step()  # warm-up (oneDNN primitives for this shape, allocator)
        seconds = median([timed(step) for _ in range(reps)])
    return {"images_per_s": round(batch / seconds, 3), "s_per_batch": round(seconds, 4), **mem}


def run(p: dict, *, device: str = "cpu") -> Result:
    from b4transfer.inference import fast_model, resolve_precision
    from b4transfer.module import TransferModule

    torch.manual_seed(0)
    dev = torch.device(device)
    module = TransferModule(class_names=[f"c{i}" for i in range(10)],
                            model={"name": p["model"], "pretrained": False}).to(dev)
    bf16_infer = resolve_precision("auto", dev) == "bf16"
    bf16_train = p.get("train_bf16", False)
    rows = []

    def add(kind: str, batch: int, size: int) -> None:
        x = torch.randn(batch, 3, size, size, device=dev)
        if kind == "inference":
            module.eval()
            ctx = fast_model(module, channels_last=True, compile=False)
            make = lambda: _inference_step(module, x, bf16_infer)  # noqa: E731
        else:
            module.train()
            ctx = fast_model(module, channels_last=True, compile=False) if p.get("train_channels_last") \
                else contextlib.nullcontext()
            y = torch.randint(0, 10, (batch,), device=dev)
            make = lambda: _train_step(module, x, y, bf16_train)  # noqa: E731
        with ctx:
            rows.append({"kind": kind, "batch_size": batch, "image_size": size,
                         **_measure(make, batch, p["reps"])})

    for kind in ("inference", "train"):
        size = p[f"{kind}_size"]
        configs = {(batch, size) for batch in p[f"{kind}_batches"]}
        configs |= {(p[f"{kind}_batch"], other) for other in p[f"{kind}_sizes"]}
        for batch, side in sorted(configs, key=lambda c: c[0] * c[1] ** 2):  # small to large: RSS rises
            add(kind, batch, side)
    return Result(
        name="scaling" if dev.type == "cpu" else "gpu_scaling",
        title=f"Scaling with batch size and image size, {p['model']}",
        settings={"model": p["model"], "reps": p["reps"], "device": dev.type,
                  "inference": f"{'bf16' if bf16_infer else 'fp32'} autocast, channels_last",
                  "train": f"{'bf16' if bf16_train else 'fp32'}, "
                           f"{'channels_last' if p.get('train_channels_last') else 'NCHW'}"},
        extra={"rows": rows},
    )
