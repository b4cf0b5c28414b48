"""Scaling: images/s and peak memory vs batch size and image size, for inference and training.

Inference runs the library's fast path (the ``predict.*`` defaults: bf16 autocast where native,
channels_last) on the module's network; training runs forward + loss + backward + AdamW step on
the same network in fp32; the time is the best of ``reps`` batches after a warm-up (not
interleaved: on a shared machine load only ever slows a run down). Each configuration runs in a
fresh process, so its peak RSS (``VmHWM``: Python, torch, the model, activations) is its own;
``rss_increase_mib`` is the rise above the RSS once the model is built. On CUDA also
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import Result, rss_bytes, timed


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


def _vm_hwm() -> int:
    """Peak RSS of this process image in bytes (``VmHWM``; ``ru_maxrss`` would carry the parent's
    peak across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return rss_bytes()


def _measure(make_step, batch: int, reps: int, device) -> dict:
    step = make_step()
    base_rss = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (oneDNN primitives / cuDNN plans for this shape, allocator)
    seconds = min(timed(step) for _ in range(reps))  # best of reps: other jobs only ever slow it down
    peak = _vm_hwm()
    out = {"images_per_s": round(batch / seconds, 3), "s_per_batch": round(seconds, 4),
           "rss_peak_mib": round(peak / 2**20, 1), "rss_increase_mib": round((peak - base_rss) / 2**20, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def measure_one(p: dict, kind: str, batch: int, size: int, device: str) -> dict:
    """One configuration, in this (fresh) process: build the module, warm up, time, read peak memory."""
    from b4transfer.runtime.inference import fast_model, resolve_precision
    from b4transfer.tasks.classification import ClassificationModule

    if p.get("threads"):
        torch.set_num_threads(p["threads"])
    torch.manual_seed(0)
    dev = torch.device(device)
    module = ClassificationModule(class_names=[f"c{i}" for i in range(10)],
                            model={"name": p["model"], "pretrained": False}).to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    if kind == "inference":
        module.eval()
        ctx = fast_model(module, channels_last=True, compile=False)
        bf16 = resolve_precision("auto", dev) == "bf16"
        make = lambda: _inference_step(module, x, bf16)  # noqa: E731
    else:
        module.train()
        ctx = fast_model(module, channels_last=True, compile=False) if p.get("train_channels_last") \
            else contextlib.nullcontext()
        y = torch.randint(0, 10, (batch,), device=dev)
        make = lambda: _train_step(module, x, y, p.get("train_bf16", False))  # noqa: E731
    with ctx:
        measured = _measure(make, batch, p["reps"], dev)
    return {"kind": kind, "batch_size": batch, "image_size": size, **measured}


def _child(p: dict, kind: str, batch: int, size: int, device: str) -> dict:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(root), env.get("PYTHONPATH", "")) if x)
    args = json.dumps({"p": p, "kind": kind, "batch": batch, "size": size, "device": device})
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_scaling", args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"scaling child {kind} batch={batch} size={size} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(p: dict, *, device: str = "cpu") -> Result:
    """Every configuration in its own process, so that peak RSS belongs to that configuration alone."""
    from b4transfer.runtime.inference import resolve_precision

    p = {**p, "threads": torch.get_num_threads()}
    rows = []
    for kind in ("inference", "train"):
        size = p[f"{kind}_size"]
        configs = {(batch, size) for batch in p[f"{kind}_batches"]}
        configs |= {(p[f"{kind}_batch"], other) for other in p[f"{kind}_sizes"]}
        for batch, side in sorted(configs, key=lambda c: c[0] * c[1] ** 2):
            rows.append(_child(p, kind, batch, side, device))
    dev = torch.device(device)
    bf16_infer = resolve_precision("auto", dev) == "bf16"
    bf16_train = p.get("train_bf16", False)
    return Result(
        name="scaling" if dev.type == "cpu" else "gpu_scaling",
        title=f"Scaling with batch size and image size, {p['model']}",
        settings={"model": p["model"], "reps": p["reps"], "device": dev.type, "threads": p["threads"],
                  "inference": f"{'bf16' if bf16_infer else 'fp32'} autocast, channels_last",
                  "train": f"{'bf16' if bf16_train else 'fp32'}, "
                           f"{'channels_last' if p.get('train_channels_last') else 'NCHW'}"},
        extra={"rows": rows},
    )


if __name__ == "__main__":
    import benchmarks  # noqa: F401  (OMP wait policy, set before torch starts its threads)

    a = json.loads(sys.argv[1])
    print(json.dumps(measure_one(a["p"], a["kind"], a["batch"], a["size"], a["device"])))
