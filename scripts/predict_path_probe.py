"""Where the ``mode=predict`` path loses time against the model alone: one diagnostic pass, stage by stage.

The GPU suite's ``gpu_inference`` row missed its target on an H200 (the path at 0.96x a naive fp32 loop,
while ``gpu_scaling`` ran the same model with the same settings 2.6x faster). This script times, on one
machine and the same weights, each step the path adds on top of the model (images/s, median of
``--rounds``), so a single GPU call says which one starves it:

1. ``model``: the module's forward under bf16 autocast (where native), channels_last, NCHW float input
   already on the device, as ``gpu_scaling`` times it;
2. ``predict_step``: the module's own ``predict_step`` on ``uint8`` batches already on the device
   (normalisation on the device + the fp32 head + probabilities);
3. ``+ copy``: the same, each ``uint8`` batch copied from pinned host memory (``non_blocking``) and its
   probabilities brought back to the host after every batch, as Lightning's prediction loop does;
4. ``run_inference``: :func:`b4transfer.tasks.classification.predict.run_inference` (``Trainer.predict``),
   what ``mode=predict`` and ``gpu_inference`` run; ``run_inference x2 data``: the same on twice the
   images, so the difference gives its rate without the per-call start-up
   (``per_call_s``: Trainer set-up, moving the model, tear-down).

``--profile`` adds ``torch.profiler``'s table of the ``run_inference`` stage (top operators by device
time, and by host time). Output: a table on stdout and ``--out`` JSON.

    python scripts/predict_path_probe.py --device cuda --out /tmp/probe.json               # on a GPU
    python scripts/predict_path_probe.py --model test_efficientnet --images 64 --batch-size 16 # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
from benchmarks.common import timed  # noqa: E402 - seconds, synchronised with the GPU before and after


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="efficientnet_b4")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)

    from b4transfer.runtime.inference import InferenceSettings, fast_model, resolve_precision
    from b4transfer.tasks.classification import ClassificationModule
    from b4transfer.tasks.classification.predict import run_inference

    dev = torch.device(args.device)
    torch.manual_seed(0)
    module = ClassificationModule(class_names=[f"c{i}" for i in range(6)],
                                  model={"name": args.model, "pretrained": False}).eval()
    size = module.data_config["eval"]["input_size"][-1]
    bs = args.batch_size
    x8 = torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8)
    index = torch.arange(args.images)
    pinned = [(b.pin_memory() if dev.type == "cuda" else b, i) for b, i in zip(x8.split(bs), index.split(bs))]
    on_dev = [(b.to(dev), i.to(dev)) for b, i in pinned]
    floats = [module.normalize_input(b) for b, _ in on_dev]
    bf16 = resolve_precision("auto", dev) == "bf16"
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def model_alone():
        with torch.inference_mode(), autocast:
            for x in floats:
                module(x)

    def predict_step():
        with torch.inference_mode(), autocast:
            for batch in on_dev:
                module.predict_step(batch, 0)

    def with_copy():
        with torch.inference_mode(), autocast:
            for b, i in pinned:
                batch = (b.to(dev, non_blocking=True), i.to(dev, non_blocking=True))
                module.predict_step(batch, 0)["probs"].cpu()

    settings = InferenceSettings(check_agreement=0)
    kwargs = {"accelerator": "gpu" if dev.type == "cuda" else "cpu", "enable_progress_bar": False}
    loader = DataLoader(pinned, batch_size=None)
    loader2 = DataLoader(pinned + pinned, batch_size=None)

    def path(data=loader):
        return lambda: run_inference(module, data, settings=settings, trainer_kwargs=kwargs)

    stages = {"model": model_alone, "predict_step": predict_step, "+ copy": with_copy}
    seconds: dict[str, list[float]] = {n: [] for n in [*stages, "run_inference", "run_inference x2 data"]}
    for r in range(args.rounds + 1):  # round 0 warms up
        with fast_model(module.to(dev), channels_last=True, compile=False):
            for name, fn in stages.items():
                s = timed(fn)
                if r:
                    seconds[name].append(s)
        for name, fn in (("run_inference", path()), ("run_inference x2 data", path(loader2))):
            s = timed(fn)
            if r:
                seconds[name].append(s)
    n = args.images
    rows = {name: round(n * (2 if "x2" in name else 1) / statistics.median(s), 1)
            for name, s in seconds.items()}
    one = statistics.median(seconds["run_inference"])
    two = statistics.median(seconds["run_inference x2 data"])
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "model": args.model, "image_size": size, "batch_size": bs, "images": n, "bf16": bf16,
        "images_per_s": rows,
        "run_inference_steady_images_per_s": round(n / (two - one), 1) if two > one else None,
        "per_call_s": round(2 * one - two, 3),
        "torch": torch.__version__,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    print(json.dumps(report, indent=1))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            path()()
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        report["profile_device"] = prof.key_averages().table(sort_by=key, row_limit=20)
        report["profile_host"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
        print(report["profile_device"], report["profile_host"], sep="\n")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
