"""predict.runtime on a real classification set: each runtime's val/acc1 and what ``auto`` measures.

Fine-tunes ``--model`` from ``--weights`` briefly on ``--data`` (``train/<class>``, ``val/<class>``), then
through the library's own modes (:func:`b4transfer.modes.run` with composed configs, as ``run.py`` runs):

1. ``mode=validate precision=32-true`` with ``predict.runtime=torch`` (the fp32 eager reference),
   ``onnxruntime``, ``openvino`` and ``onnx_int8``: ``val/acc1`` of each and its difference from torch's
   against ``export.parity_tolerance``. These runs build the exports beside the checkpoint (INT8 calibrated
   on the first ``export.int8_calibration_images`` training images);
2. ``mode=predict predict.runtime=auto predict.check_agreement=<every val image>`` on ``<data>/val``
   (reusing those exports): which runtime ran, every candidate's images/s (decoded images, after a
   warm-up pass) and top-1 agreement with fp32 eager PyTorch on every val image, and the predictions'
   top-1 accuracy against the folder labels.

Writes ``--out`` (JSON) and prints a markdown table with the CPU model and the package versions. The run
folders (checkpoint, exports, summaries) stay in ``--work``.

    python scripts/runtime_real_check.py --data /work/data/real_cls --out runtime_real_check.results.json \\
        --weights /work/shared/weights/tf_efficientnet_lite1_timm.safetensors
    python scripts/runtime_real_check.py --smoke --out /tmp/runtime_smoke.json   # generated set, 48 px
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local weights only: never the network

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from PIL import Image  # noqa: E402

from b4transfer.cli.entry import config_dir  # noqa: E402
from b4transfer.modes import run  # noqa: E402
from b4transfer.modes.predict import list_images  # noqa: E402
from b4transfer.runtime.cache import MARKER_NAME  # noqa: E402

RUNTIMES = ("torch", "onnxruntime", "openvino", "onnx_int8")
PACKAGES = ("b4transfer", "torch", "onnxruntime", "openvino", "onnx", "timm", "lightning")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
SMOKE_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="train/<class>/*.jpg + val/<class>/*.jpg (data=folder)")
    parser.add_argument("--weights", type=Path, help="model.weights: a timm-layout .safetensors/.pth")
    parser.add_argument("--out", type=Path, required=True, help="the results JSON")
    parser.add_argument("--model", default="tf_efficientnet_lite1")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--work", type=Path, help="where the runs go (default: a new temporary folder)")
    parser.add_argument("--threads", type=int, help="torch's (and the exports') threads")
    parser.add_argument("--smoke", action="store_true",
                        help="a generated 3-class set at 48 px, model test_efficientnet, random init")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model = "test_efficientnet" if args.model == parser.get_default("model") else args.model
        args.image_size = 48 if args.image_size == parser.get_default("image_size") else args.image_size
    elif args.data is None or args.weights is None:
        parser.error("--data and --weights are needed (or --smoke)")
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file")
    return args


def smoke_data(root: Path, *, train: int = 10, val: int = 6, size: int = 64) -> Path:
    """``root/{train,val}/<colour>/*.jpg``: noisy images whose mean colour gives the class away."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name, colour in SMOKE_COLOURS.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.integers(-60, 60, size=(size, size, 3))
                arr = np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{i:03d}.jpg", quality=90)
    return root


def make_cfg(args: argparse.Namespace, run_dir: Path, *overrides: str):
    """The config ``run.py`` composes from these overrides (the data, model and run dir first)."""
    weights = [f"model.weights={args.weights}"] if args.weights else ["model.pretrained=false"]
    base = ["data=folder", f"data.root={args.data}", f"model.name={args.model}", *weights,
            f"data.image_size={args.image_size}", "trainer.enable_progress_bar=false", "logger=none",
            f"run_dir={run_dir}"]
    if args.smoke:
        base += ["trainer.accelerator=cpu", "data.num_workers=0", "data.batch_size=8", "optim.lr=0.01",
                 "export.int8_calibration_images=8"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=[*base, *overrides])


def timed_run(cfg) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    summary = run(cfg)
    return summary, round(time.perf_counter() - start, 2)


def fine_tune(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``mode=train`` for ``--epochs``; the checkpoint the other steps use (the best, else the last)."""
    summary, seconds = timed_run(make_cfg(args, work / "train", f"trainer.max_epochs={args.epochs}"))
    return {"checkpoint": summary.get("best_checkpoint") or summary["last_checkpoint"],
            "best_val_acc1": summary.get("best_score"), "train_images": summary["train_images"],
            "val_images": summary["val_images"], "precision": summary["precision"],
            "train_images_per_s": summary.get("train_images_per_s"), "wall_s": seconds}


def validate(args: argparse.Namespace, work: Path, ckpt: str, runtime: str) -> dict[str, Any]:
    """``mode=validate`` in fp32 through ``runtime``: its val/acc1 and its runtime report."""
    cfg = make_cfg(args, work / f"validate-{runtime}", "mode=validate", f"ckpt_path={ckpt}",
                   "precision=32-true", f"predict.runtime={runtime}")
    summary, seconds = timed_run(cfg)
    report = summary.get("runtime") or {"requested": "torch", "used": "torch"}
    if report["used"] != runtime:
        raise RuntimeError(f"predict.runtime={runtime} ran {report['used']}: {report.get('reason')}")
    entry = (report.get("candidates") or {}).get(runtime, {})
    return {"val_acc1": summary["metrics"]["val/acc1"], "wall_s": seconds, "export": entry.get("artefact"),
            "export_reused": entry.get("reused"), "sample_agreement": entry.get("agreement")}


def parity(rows: dict[str, dict[str, Any]], tolerance: float) -> None:
    """Each row's ``diff_vs_torch_fp32`` and ``within_tolerance`` (``|diff| <= tolerance``)."""
    reference = rows["torch"]["val_acc1"]
    for row in rows.values():
        row["diff_vs_torch_fp32"] = round(row["val_acc1"] - reference, 6)
        row["within_tolerance"] = abs(row["diff_vs_torch_fp32"]) <= tolerance


def predict_auto(args: argparse.Namespace, work: Path, ckpt: str) -> dict[str, Any]:
    """``mode=predict predict.runtime=auto`` on every val image, each one in the agreement check."""
    val = args.data / "val"
    count = len(list_images(val))
    cfg = make_cfg(args, work / "predict-auto", "mode=predict", f"ckpt_path={ckpt}", f"predict.input={val}",
                   "predict.runtime=auto", f"predict.check_agreement={count}")
    summary, seconds = timed_run(cfg)
    report = summary["runtime"]
    candidates = {
        name: {"images_per_s": entry.get("images_per_s"), "agrees": entry.get("agrees"),
               "top1_agreement_vs_fp32": (entry.get("agreement") or {}).get("top1_agreement"),
               "max_abs_prob_diff": (entry.get("agreement") or {}).get("max_abs_prob_diff"),
               "export_reused": entry.get("reused"), "precision": entry.get("precision")}
        for name, entry in report["candidates"].items()
    }
    used = report["used"]
    return {"images": summary["images"], "check_agreement": count, "used": used, "reason": report["reason"],
            "fallbacks": report.get("fallbacks", {}), "candidates": candidates,
            "top1_agreement_vs_fp32": candidates.get(used, {}).get("top1_agreement_vs_fp32"),
            "top1_accuracy_vs_folder_labels": folder_accuracy(Path(summary["predictions"]), val),
            "inference": summary.get("inference"), "wall_s": seconds, "cache": report.get("cache"),
            "exports_built": built(report.get("cache"))}


def built(cache: str | None) -> dict[str, Any]:
    """What the export cache records as built (seconds; INT8: how many calibration images)."""
    marker = Path(cache or "") / MARKER_NAME
    return json.loads(marker.read_text()).get("built", {}) if cache and marker.is_file() else {}


def folder_accuracy(predictions: Path, root: Path) -> float:
    """Share of ``predictions.csv`` rows whose ``label1`` is the image's class folder under ``root``."""
    with predictions.open(newline="") as f:
        rows = list(csv.DictReader(f))
    hits = [row["label1"] == Path(row["path"]).relative_to(root).parts[0] for row in rows]
    return round(sum(hits) / len(hits), 6)


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the vector / matrix extensions that matter for the runtimes."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first CPU's
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = set(fields.get("flags", "").split())
    return {"model_name": name, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "flags": [f for f in CPU_FLAGS if f in flags]}


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown: the setting, the auto choice's candidates, each runtime's val/acc1."""
    cpu, pred, tol = results["cpu"], results["predict_auto"], results["parity_tolerance"]
    lines = [f"CPU: {cpu['model_name']} ({cpu['logical_cpus']} logical CPUs, torch threads "
             f"{cpu['torch_threads']}, flags: {', '.join(cpu['flags']) or 'none of ' + '/'.join(CPU_FLAGS)})",
             "versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
             f"model {results['model']} @ {results['image_size']} px, weights {results['weights']}, "
             f"{results['epochs']} epoch(s) on {results['data']}: {results['train']['train_images']} train / "
             f"{results['train']['val_images']} val images",
             "", f"mode=predict predict.runtime=auto on {pred['images']} val images "
             f"(check_agreement={pred['check_agreement']}): **{pred['used']}** ran ({pred['reason']}); "
             f"top-1 accuracy vs folder labels {_pct(pred['top1_accuracy_vs_folder_labels'])}",
             "", "| runtime | images/s (decoded) | top-1 agreement vs fp32 eager | agrees (>= 99 %) | ran |",
             "|---|---|---|---|---|"]
    for name, c in pred["candidates"].items():
        speed = "n/a" if c["images_per_s"] is None else f"{c['images_per_s']:.1f}"
        lines.append(f"| {name} | {speed} | {_pct(c['top1_agreement_vs_fp32'])} | {c['agrees']} | "
                     f"{'yes' if name == pred['used'] else ''} |")
    for name, why in pred["fallbacks"].items():
        if name not in pred["candidates"]:
            lines.append(f"| {name} | passed over: {why} | | | |")
    lines += ["", f"mode=validate precision=32-true predict.runtime=...: val/acc1 (parity tolerance {tol})",
              "",
              "| runtime | val/acc1 | diff vs torch fp32 | within tolerance |", "|---|---|---|---|"]
    for name, row in results["validate"].items():
        lines.append(f"| {name} | {row['val_acc1']:.4f} | {row['diff_vs_torch_fp32']:+.4f} | "
                     f"{row['within_tolerance']} |")
    calibration = pred["exports_built"].get("onnx_int8", {}).get("calibration_images")
    lines += ["", f"onnx_int8 calibrated on {calibration} training images (export.int8_calibration_images)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="runtime-real-check-"))
    if args.smoke and args.data is None:
        args.data = smoke_data(work / "data")
    start = time.perf_counter()
    trained = fine_tune(args, work)
    rows = {name: validate(args, work, trained["checkpoint"], name) for name in RUNTIMES}
    tolerance = float(make_cfg(args, work / "train").export.parity_tolerance)
    parity(rows, tolerance)
    results = {"model": args.model, "image_size": args.image_size, "epochs": args.epochs,
               "weights": str(args.weights) if args.weights else None, "data": str(args.data),
               "smoke": args.smoke, "work": str(work), "cpu": cpu_info(), "versions": versions(),
               "python": sys.version.split()[0], "parity_tolerance": tolerance, "train": trained,
               "validate": rows, "predict_auto": predict_auto(args, work, trained["checkpoint"])}
    results["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nResults: {args.out} (runs in {work}; {results['wall_s']} s)")
    return results


if __name__ == "__main__":
    main()
