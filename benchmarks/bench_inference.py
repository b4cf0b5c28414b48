"""Inference: the ``mode=predict`` path vs a naive timm fp32 eval loop, plus batch-1 latency.

Library path: :func:`b4transfer.tasks.classification.predict.run_inference` with the default
``predict.*`` settings (``precision=auto`` -> bf16 where native, ``channels_last=true``) and the
benchmark's ``runtime`` (``predict.runtime``: ``torch`` through ``Trainer.predict``; ``auto`` picks the
fastest of torch, onnxruntime, OpenVINO and INT8 that agrees with fp32 on the first
``check_agreement`` images, :mod:`b4transfer.runtime.choice`; building the exports and choosing are
one-time costs, reported apart as ``export_build_s`` / ``choose_s``), over pre-decoded images as the
prediction loader gives them: ``uint8`` batches (pinned on a GPU), normalised where the model runs.
Decoding is measured separately (``predict_pipeline``).
Baseline: ``with torch.no_grad(): model(x.to(device))`` per batch, fp32, NCHW, on a plain timm classifier
holding the same weights, fed the float32 normalised batches timm's eval transform gives.

No pretrained weights can be downloaded here, so the backbone is randomly initialised and the
head is fitted (ridge regression) to the fp32 features of the generated demo images; the top-1
agreement between the two paths is measured on those images.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.common import Result, interleaved, median, quiet, ratio_of_rounds, side, timed
from benchmarks.data import demo_uint8


@torch.no_grad()
def _fit_head(module, x: torch.Tensor, labels: torch.Tensor, device) -> None:
    """Ridge-regression head on fp32 features, so that top-1 decisions mean something."""
    module.to(device).eval()
    feats = torch.cat([module.backbone(c.to(device)).float().cpu() for c in x.split(8)])
    mu, s = feats.mean(0), feats.std(0) + 1e-6
    z = torch.cat([(feats - mu) / s, torch.ones(len(feats), 1)], 1)
    targets = torch.nn.functional.one_hot(labels, module.head.fc.out_features).float() * 2 - 1
    w = torch.linalg.solve(z.T @ z + 0.1 * torch.eye(z.shape[1]), z.T @ targets)  # (C + 1, K)
    # fold the standardisation into the layer: ((f - mu) / s) W + b = f (W / s) + (b - (mu / s) W)
    module.head.fc.weight.copy_((w[:-1] / s[:, None]).T)
    module.head.fc.bias.copy_(w[-1] - (mu / s) @ w[:-1])


def run(p: dict, *, device: str = "cpu") -> Result:
    from b4transfer.data.transforms import normalize_uint8
    from b4transfer.export.timm_format import timm_classifier
    from b4transfer.runtime.inference import InferenceSettings
    from b4transfer.tasks.classification import ClassificationModule
    from b4transfer.tasks.classification.predict import run_inference

    torch.manual_seed(0)
    module = ClassificationModule(class_names=[f"c{i}" for i in range(6)],
                            model={"name": p["model"], "pretrained": False}, data=p.get("data"))
    eval_cfg = module.data_config["eval"]
    size = eval_cfg["input_size"][-1]
    x8, labels = demo_uint8(p["images"], size)
    x = normalize_uint8(x8, eval_cfg["mean"], eval_cfg["std"])  # = timm's float eval transform's output
    dev = torch.device(device)
    _fit_head(module, x, labels, dev)
    naive = timm_classifier(module.backbone, module.head.fc).to(dev).eval()
    # pre-batched, as the naive loop slices x: collating 128 single images costs ~0.1 s per batch on one
    # CPU thread, more than a GPU's bf16 forward pass, and is the input pipeline's cost (measured apart)
    bs, pin = p["batch_size"], dev.type == "cuda"
    index = torch.arange(len(x)).split(bs)
    batches = [(b.pin_memory() if pin else b, i) for b, i in zip(x8.split(bs), index)]
    loader = DataLoader(batches, batch_size=None)
    with tempfile.TemporaryDirectory() as tmp:
        runtime = _choose(module, p, x8, Path(tmp), dev)
        settings = InferenceSettings(check_agreement=0)
        kwargs = {"accelerator": "gpu" if dev.type == "cuda" else "cpu", "enable_progress_bar": True}
        out = {}

        def library() -> float:
            with quiet():
                return timed(lambda: out.update(lib=run_inference(module, loader, settings=settings,
                                                                   trainer_kwargs=kwargs)))

        @torch.no_grad()
        def naive_loop() -> None:
            out["base"] = torch.cat([naive(b.to(dev)).float().cpu() for b in x.split(p["batch_size"])])

        def baseline() -> float:
            return timed(naive_loop)

        samples = interleaved({"library": library, "baseline": baseline}, rounds=p["rounds"], warmup=1)
        probs, report = out["lib"]
        latency = _latency(module, naive, x[:1].to(dev), report, p["latency_rounds"])
    ref = out["base"].softmax(-1)
    agreement = float((probs.argmax(-1) == ref.argmax(-1)).float().mean())
    n = len(x)
    lib_ips = [n / s for s in samples["library"]]
    base_ips = [n / s for s in samples["baseline"]]
    return Result(
        name="inference" if dev.type == "cpu" else "gpu_inference",
        title=f"Inference (mode=predict path, predict.runtime={p.get('runtime', 'torch')}) vs naive timm "
              f"fp32 loop, {p['model']} @ {size}",
        settings={"model": p["model"], "image_size": size, "batch_size": p["batch_size"], "images": n,
                  "rounds": p["rounds"], "device": dev.type, "runtime": report.get("runtime", "torch"),
                  "precision": report.get("precision"), "channels_last": report.get("channels_last"),
                  "compile": report.get("compile"), "input": "uint8 batches" + (", pinned" if pin else "")},
        library=side(lib_ips, "images/s"),
        baseline=side(base_ips, "images/s"),
        ratio=ratio_of_rounds(lib_ips, base_ips),
        ratio_kind="images/s, library / naive fp32 (median of interleaved rounds)",
        target=p.get("target", ">= 2.5"),
        extra={"top1_agreement_vs_fp32": agreement, "agreement_images": n,
               "max_abs_prob_diff": float((probs - ref).abs().max()), **latency, **runtime},
    ).check()


def _choose(module, p: dict, x8: torch.Tensor, tmp: Path, dev) -> dict:
    """``predict.runtime`` as ``mode=predict`` chooses it (sample: the first images, written as PNGs);
    sets ``module.runtime_choice``; returns the summary's entries."""
    name = p.get("runtime", "torch")
    if name == "torch":
        return {}
    from omegaconf import OmegaConf

    from b4transfer import tasks
    from b4transfer.runtime.cache import RuntimeCache
    from b4transfer.runtime.choice import choose

    check, calibration = p.get("check_agreement", 16), p.get("int8_calibration_images", 32)
    paths = []
    for i, image in enumerate(x8[: max(check, calibration)]):
        paths.append(tmp / f"{i:04d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    cfg = OmegaConf.create({
        "mode": "predict", "tta": None, "data": {"batch_size": p["batch_size"]},
        "predict": {"runtime": name, "check_agreement": check, "batch_size": p["batch_size"]},
        "trainer": {"accelerator": "gpu" if dev.type == "cuda" else "cpu"},
        "export": {"onnx_opset": 17, "int8_calibration_images": calibration},
    })
    cache = RuntimeCache(tmp / "runtimes", {"checkpoint": "benchmark"})
    cache.folder.mkdir()
    start = time.perf_counter()
    module.runtime_choice = choose(cfg, tasks.get("classification"), module, paths=paths, calibration=paths,
                                   cache=cache)
    seconds = time.perf_counter() - start
    built = cache.built()
    report = module.runtime_choice.report
    return {"runtime_used": report["used"], "runtime_reason": report["reason"],
            "runtime_fallbacks": report["fallbacks"],
            "runtime_candidates": {r: {k: e.get(k) for k in ("images_per_s", "agrees")}
                                   for r, e in report["candidates"].items()},
            "export_build_s": round(sum(b["seconds"] for b in built.values()), 1),
            "choose_s": round(seconds - sum(b["seconds"] for b in built.values()), 1)}


@torch.no_grad()
def _latency(module, naive, x1: torch.Tensor, report: dict, rounds: int) -> dict[str, float]:
    """Batch-1 latency: the fast model (same settings or runtime as predict) vs the naive fp32 model."""
    from b4transfer.runtime.inference import fast_model

    choice = getattr(module, "runtime_choice", None)
    if choice is not None and choice.exported:
        image = {"image": x1.cpu().numpy()}
        context, fast_call = contextlib.nullcontext(), lambda: choice.run(image)
    else:
        module.to(x1.device).eval()
        context = fast_model(module, channels_last=report["channels_last"], compile=False)
        autocast = torch.autocast(x1.device.type, dtype=torch.bfloat16, enabled=report["precision"] == "bf16")

        def fast_call():
            with autocast:
                return module(x1)

    with context:
        samples = interleaved({"fast": lambda: timed(fast_call), "naive": lambda: timed(lambda: naive(x1))},
                              rounds=rounds, warmup=2)
    return {"latency_batch1_ms": round(1000 * median(samples["fast"]), 2),
            "latency_batch1_naive_ms": round(1000 * median(samples["naive"]), 2)}
