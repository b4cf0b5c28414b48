"""Inference: the ``mode=predict`` path vs a naive timm fp32 eval loop, plus batch-1 latency.

Library path: :func:`b4transfer.tasks.classification.predict.run_inference` with the default
``predict.*`` settings (``precision=auto`` -> bf16 where native, ``channels_last=true``)
through ``Trainer.predict``, over pre-decoded images (decoding is measured separately in the input-pipeline
benchmark).
Baseline: ``with torch.no_grad(): model(x)`` per batch, fp32, NCHW, on a plain timm classifier
holding the same weights.

No pretrained weights can be downloaded here, so the backbone is randomly initialised and the
head is fitted (ridge regression) to the fp32 features of the generated demo images; the top-1
agreement between the two paths is measured on those images.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from benchmarks.common import Result, interleaved, median, quiet, ratio_of_rounds, side, timed
from benchmarks.data import demo_batch


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
    from b4transfer.export import timm_classifier
    from b4transfer.inference import InferenceSettings
    from b4transfer.tasks.classification import ClassificationModule
    from b4transfer.tasks.classification.predict import run_inference

    torch.manual_seed(0)
    module = ClassificationModule(class_names=[f"c{i}" for i in range(6)],
                            model={"name": p["model"], "pretrained": False}, data=p.get("data"))
    eval_cfg = module.data_config["eval"]
    size = eval_cfg["input_size"][-1]
    x, labels = demo_batch(p["images"], size, mean=eval_cfg["mean"], std=eval_cfg["std"])
    dev = torch.device(device)
    _fit_head(module, x, labels, dev)
    naive = timm_classifier(module.backbone, module.head.fc).to(dev).eval()
    # pre-batched, as the naive loop slices x: collating 128 single images costs ~0.1 s per batch on one
    # CPU thread, more than a GPU's bf16 forward pass, and is the input pipeline's cost (measured apart)
    bs = p["batch_size"]
    loader = DataLoader(list(zip(x.split(bs), torch.arange(len(x)).split(bs))), batch_size=None)
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
    ref = out["base"].softmax(-1)
    agreement = float((probs.argmax(-1) == ref.argmax(-1)).float().mean())
    n = len(x)
    lib_ips = [n / s for s in samples["library"]]
    base_ips = [n / s for s in samples["baseline"]]
    latency = _latency(module, naive, x[:1].to(dev), report, p["latency_rounds"])
    return Result(
        name="inference" if dev.type == "cpu" else "gpu_inference",
        title=f"Inference (mode=predict path) vs naive timm fp32 loop, {p['model']} @ {size}",
        settings={"model": p["model"], "image_size": size, "batch_size": p["batch_size"], "images": n,
                  "rounds": p["rounds"], "device": dev.type, "precision": report["precision"],
                  "channels_last": report["channels_last"], "compile": report["compile"]},
        library=side(lib_ips, "images/s"),
        baseline=side(base_ips, "images/s"),
        ratio=ratio_of_rounds(lib_ips, base_ips),
        ratio_kind="images/s, library / naive fp32 (median of interleaved rounds)",
        target=p.get("target", ">= 2.5"),
        extra={"top1_agreement_vs_fp32": agreement, "agreement_images": n,
               "max_abs_prob_diff": float((probs - ref).abs().max()), **latency},
    ).check()


@torch.no_grad()
def _latency(module, naive, x1: torch.Tensor, report: dict, rounds: int) -> dict[str, float]:
    """Batch-1 latency: the fast model (same settings as predict) vs the naive fp32 model."""
    from b4transfer.inference import fast_model

    bf16 = report["precision"] == "bf16"
    module.to(x1.device).eval()
    with fast_model(module, channels_last=report["channels_last"], compile=False):
        autocast = torch.autocast(x1.device.type, dtype=torch.bfloat16, enabled=bf16)

        def fast() -> float:
            with autocast:
                return timed(lambda: module(x1))

        samples = interleaved({"fast": fast, "naive": lambda: timed(lambda: naive(x1))},
                              rounds=rounds, warmup=2)
    return {"latency_batch1_ms": round(1000 * median(samples["fast"]), 2),
            "latency_batch1_naive_ms": round(1000 * median(samples["naive"]), 2)}
