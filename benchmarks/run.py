"""Run the benchmark suite: ``python -m benchmarks.run --suite cpu|gpu|accuracy [--quick]``.

Writes ``benchmarks/results/<suite>-<profile>.json`` (machine, versions, settings, every sample) and
a plot next to it, then regenerates ``BENCHMARKS.md`` from all result files there. Profiles:
``full`` (default), ``--quick`` (under 10 minutes on 2 CPU cores), ``--smoke`` (seconds, tiny
model: checks the harness, the numbers mean nothing). ``--suite gpu`` without a CUDA device writes
a result file saying so and exits 0. ``--suite accuracy`` trains on real images with real weights
(``--det-data DIR --seg-data DIR --cls-data DIR --weights FILE``, see ``scripts/build_real_sets.py``):
hours on 2 CPU cores, so its finished runs are kept in ``--cache`` (shared with
``scripts/detection_study.py``) and reused. ``dev_classification``, ``dev_classification_10ep``,
``dev_detection`` and ``dev_segmentation`` run the multi-dataset dev benchmark (``--dev-root DIR
--weights FILE``, ``benchmarks/bench_dev_suite.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import (
    bench_cache,
    bench_detection,
    bench_detection_accuracy,
    bench_dev_suite,
    bench_distill,
    bench_inference,
    bench_pipeline,
    bench_predict_pipeline,
    bench_scaling,
    bench_segmentation,
    bench_segmentation_accuracy,
    bench_side_by_side,
    bench_time_to_accuracy,
    bench_train,
)
from benchmarks.choice_rule import BUDGETS
from benchmarks.common import Result, machine
from benchmarks.report import render

ROOT = Path(__file__).resolve().parents[1]
_AUGMENT = {"hflip": 0.5, "scale": [0.08, 1.0], "color_jitter": 0.4, "auto_augment": None, "re_prob": 0.0}
TINY = {"model": "test_efficientnet", "data": {"image_size": 32}}
# Per-step framework overhead in ms, measured where it is most of a step (see bench_train).
_TINY_TRAIN = dict(model="test_efficientnet", image_size=32, batch_size=4, k=4, rounds=20, warmup=1,
                   steps_per_epoch=40)

PROFILES: dict[str, dict[str, dict]] = {
    "smoke": {
        "train_overhead": dict(model="test_efficientnet", image_size=32, batch_size=4, k=1, rounds=1,
                               warmup=1, steps_per_epoch=2),
        "inference": dict(TINY, images=8, batch_size=4, rounds=1, latency_rounds=1, runtime="auto",
                          check_agreement=4, int8_calibration_images=4),
        "predict_pipeline": dict(TINY, images=8, photo_size=[256, 192], batch_size=4, workers=0, rounds=1,
                                 runtime="auto", check_agreement=4, int8_calibration_images=4,
                                 decode_images=2),
        "input_pipeline": dict(TINY, images=2, photo_size=[256, 192], rounds=1, model_batch=2, model_steps=1,
                               augment=_AUGMENT),
        "cached_probe": dict(model="test_efficientnet", image_size=32, train_images=8, val_images=4,
                             batch_size=4, epochs=1, cached_epochs=2, rounds=1, file_size=48),
        "scaling": dict(model="test_efficientnet", reps=1, inference_size=32, inference_batches=[1, 2],
                        inference_sizes=[], inference_batch=2, train_size=32, train_batches=[2],
                        train_sizes=[], train_batch=2),
        "detection": dict(model="test_efficientnet", image_size=64, batch_size=2, k=1, rounds=1, warmup=1,
                          steps_per_epoch=2, predict_images=4, predict_rounds=1),
        "segmentation_fpn": dict(model="test_efficientnet", decoder="fpn", image_size=64, batch_size=2, k=1,
                                 rounds=1, warmup=1, steps_per_epoch=2),
    },
    "quick": {
        "train_overhead": dict(model="efficientnet_b0", image_size=160, batch_size=16, k=1, rounds=60,
                               warmup=1, steps_per_epoch=10, tiny=_TINY_TRAIN),
        "inference": dict(model="efficientnet_b4", images=32, batch_size=8, rounds=5, latency_rounds=7,
                          runtime="auto", check_agreement=16, int8_calibration_images=32),
        "predict_pipeline": dict(model="efficientnet_b4", images=32, photo_size=[1632, 1224], batch_size=8,
                                 workers=1, rounds=3, runtime="auto", check_agreement=8,
                                 int8_calibration_images=16),
        "input_pipeline": dict(model="efficientnet_b4", images=24, photo_size=[1632, 1224], rounds=5,
                               model_batch=4, model_steps=2, augment=_AUGMENT),
        "cached_probe": dict(model="efficientnet_b4", train_images=32, val_images=8, batch_size=8, epochs=2,
                             cached_epochs=6, rounds=1, file_size=400),
        "scaling": dict(model="efficientnet_b4", reps=3, inference_size=384, inference_batches=[1, 4, 8],
                        inference_sizes=[256, 320], inference_batch=4, train_size=320, train_batches=[2, 4],
                        train_sizes=[256], train_batch=2),
        "detection": dict(model="efficientnet_b0", image_size=256, batch_size=4, k=1, rounds=12, warmup=1,
                          steps_per_epoch=13, predict_images=16, predict_rounds=3),
        "segmentation_fpn": dict(model="efficientnet_b0", decoder="fpn", image_size=256, batch_size=4, k=1,
                                 rounds=12, warmup=1, steps_per_epoch=13),
        "segmentation_unet": dict(model="efficientnet_b0", decoder="unet", image_size=256, batch_size=4, k=1,
                                  rounds=12, warmup=1, steps_per_epoch=13),
        "side_by_side": dict(model="efficientnet_b0", image_size=128, batch_size=16, epochs=2,
                             train_batches=12, rounds=1),
    },
    "full": {
        "train_overhead": dict(model="efficientnet_b4", image_size=320, batch_size=8, k=2, rounds=8, warmup=1,
                               steps_per_epoch=8, tiny=_TINY_TRAIN),
        "inference": dict(model="efficientnet_b4", images=64, batch_size=32, rounds=5, latency_rounds=10,
                          runtime="auto", check_agreement=16, int8_calibration_images=64),
        "predict_pipeline": dict(model="efficientnet_b4", images=64, photo_size=[1632, 1224], batch_size=16,
                                 workers=1, rounds=5, runtime="auto", check_agreement=16,
                                 int8_calibration_images=32),
        "input_pipeline": dict(model="efficientnet_b4", images=48, photo_size=[1632, 1224], rounds=5,
                               model_batch=8, model_steps=3, augment=_AUGMENT),
        "cached_probe": dict(model="efficientnet_b4", train_images=64, val_images=16, batch_size=16, epochs=3,
                             cached_epochs=8, rounds=2, file_size=400),
        "scaling": dict(model="efficientnet_b4", reps=3, inference_size=384, inference_batches=[1, 8, 32],
                        inference_sizes=[224, 320, 448], inference_batch=8, train_size=320,
                        train_batches=[4, 8, 16], train_sizes=[224, 384], train_batch=8),
        "detection": dict(model="efficientnet_b4", image_size=384, batch_size=4, k=2, rounds=8, warmup=1,
                          steps_per_epoch=9, predict_images=32, predict_rounds=3),
        "segmentation_fpn": dict(model="efficientnet_b4", decoder="fpn", image_size=320, batch_size=8, k=2,
                                 rounds=8, warmup=1, steps_per_epoch=9),
        "segmentation_unet": dict(model="efficientnet_b4", decoder="unet", image_size=320, batch_size=8, k=2,
                                  rounds=8, warmup=1, steps_per_epoch=9),
        "side_by_side": dict(model="efficientnet_b0", image_size=128, batch_size=16, epochs=2,
                             train_batches=12, rounds=2),
    },
}
GPU_PROFILES: dict[str, dict[str, dict]] = {
    name: {
        "gpu_train": dict(model="efficientnet_b4", image_size=320, batch_size=96 if name == "full" else 64,
                          k=5, rounds=10 if name == "full" else 4, warmup=1, steps_per_epoch=20,
                          channels_last=True),
        # enough batches for a steady rate: at 256 images (2 batches) Trainer.predict's start-up weighed
        # on the library's side (ratio 0.67 on an H200 vs 0.96 at 2048 images)
        "gpu_inference": dict(model="efficientnet_b4", images=4096 if name == "full" else 2048,
                              batch_size=128,
                              rounds=5 if name == "full" else 3, latency_rounds=20, target=">= 1.5"),
        # the loader (8 workers, pinned uint8 batches) against the model on the GPU, from 2 MP JPEGs
        "gpu_predict_pipeline": dict(model="efficientnet_b4", images=1024 if name == "full" else 512,
                                     photo_size=[1632, 1224], batch_size=128, workers=8,
                                     rounds=3 if name == "full" else 2),
        "gpu_scaling": dict(model="efficientnet_b4", reps=5, inference_size=384,
                            inference_batches=[1, 32, 128], inference_sizes=[320, 448], inference_batch=32,
                            train_size=320, train_batches=[32, 64, 96], train_sizes=[384], train_batch=32,
                            train_bf16=True, train_channels_last=True),
    }
    for name in ("quick", "full")
}
GPU_PROFILES["smoke"] = {
    "gpu_train": dict(PROFILES["smoke"]["train_overhead"], channels_last=True),
    "gpu_inference": dict(PROFILES["smoke"]["inference"]),
    "gpu_scaling": dict(PROFILES["smoke"]["scaling"], train_bf16=True, train_channels_last=True),
    "gpu_predict_pipeline": dict(TINY, images=8, photo_size=[256, 192], batch_size=4, workers=2, rounds=1),
}
# Accuracy against plain loops on real images and real ImageNet weights (paths given on the command line).
_DET_ACCURACY = dict(model="tf_efficientnet_lite1", image_size=256, epochs=4, seeds=[0, 1, 2], workers=2)
# Segmentation beside segmentation_models_pytorch: the same weights file as detection (--weights).
# (arms: library defaults and SMP; the library-with-SMP's-recipe diagnostic arm only in the smoke profile)
_SEG_ACCURACY = dict(model="tf_efficientnet_lite1", image_size=256, epochs=4, seeds=[0, 1, 2],
                     arms=["library"])
# Time to accuracy: the library's defaults vs a naive loop on a class-folder set of real images (--cls-data).
_TIME_TO_ACCURACY = dict(model="tf_efficientnet_lite1", image_size=224, epochs=5, seeds=[0, 1, 2])
# Distillation (lite1 teacher -> lite0 student, --weights and --student-weights) and pseudo-labels on a
# quarter of the labels (--cls-data); the first (alpha, T) is the headline arm, more add arms.
# One teacher (seed 0, at 224 px for 8 epochs: stronger than the student, as a user's teacher is) serves
# every student seed; the students train at 160 px for 5 epochs.
_DISTILL = dict(teacher_model="tf_efficientnet_lite1", student_model="tf_efficientnet_lite0", image_size=160,
                epochs=5, seeds=[0, 1, 2], teacher_image_size=224, teacher_epochs=8, teacher_seed=0,
                distill_settings=[[0.5, 4.0], [0.9, 4.0]])
# The multi-dataset dev benchmark (issue 27; --dev-root DIR of scripts/build_dev_sets.py's sets, --weights):
# every arm its task defines (bench_dev_suite.cls_arms / det_arms / seg_arms; --dev-arms narrows them) on
# every set of the task (held-out sets reported, never voting), arm by arm, seeds [0, 1, 2].
_DEV_CLS = dict(model="tf_efficientnet_lite1", image_size=128, epochs=BUDGETS["classification"][0],
                seeds=[0, 1, 2])
_DEV_DET = dict(model="tf_efficientnet_lite1", image_size=320, epochs=BUDGETS["detection"][0],
                seeds=[0, 1, 2])
# Segmentation at the accuracy suite's budget (segmentation_accuracy_*: 256 px, 4 epochs).
_DEV_SEG = dict(model="tf_efficientnet_lite1", image_size=256, epochs=BUDGETS["segmentation"][0],
                seeds=[0, 1, 2])
_DEV = {"dev_classification": _DEV_CLS,
        "dev_classification_10ep": dict(_DEV_CLS, epochs=BUDGETS["classification"][1]),
        "dev_detection": _DEV_DET, "dev_segmentation": _DEV_SEG}
# Distillation on real_cls at 10 student epochs: at 5 the gain (+0.024) stayed within the student's seed
# spread (0.032); at 10 it is beyond it (docs/guides/distillation.md has both). Pseudo-labels stay at 5.
_DISTILL_REAL = dict(_DISTILL, epochs=10, distill_settings=[[0.5, 4.0]])
# The same on the dev set cls_glyphs (--dev-root; 26 classes, 64 px glyphs), where a quarter of the labels
# is far below all of them (on real_cls it is not): students at 96 px, the teacher at 128 px.
_DISTILL_GLYPHS = dict(_DISTILL, dev_set="cls_glyphs", image_size=96, teacher_image_size=128,
                       distill_settings=[[0.5, 4.0], [0.5, 2.0]], speed_rounds=20)
ACCURACY_PROFILES: dict[str, dict[str, dict]] = {
    "full": {"detection_accuracy": _DET_ACCURACY,
             "segmentation_accuracy_fpn": dict(_SEG_ACCURACY, decoder="fpn"),
             "segmentation_accuracy_unet": dict(_SEG_ACCURACY, decoder="unet"),
             "time_to_accuracy": _TIME_TO_ACCURACY,
             "distillation": _DISTILL_REAL, "pseudo_labels": _DISTILL, **_DEV,
             "distillation_glyphs": _DISTILL_GLYPHS, "pseudo_labels_glyphs": _DISTILL_GLYPHS},
    "quick": {"detection_accuracy": _DET_ACCURACY,
              "segmentation_accuracy_fpn": dict(_SEG_ACCURACY, decoder="fpn"),
              "time_to_accuracy": dict(_TIME_TO_ACCURACY, seeds=[0]),
              "distillation": dict(_DISTILL_REAL, seeds=[0]), "pseudo_labels": dict(_DISTILL, seeds=[0]),
              **{name: dict(params, seeds=[0]) for name, params in _DEV.items()}},
    "smoke": {"detection_accuracy": dict(model="tf_efficientnet_lite1", image_size=96, epochs=1, seeds=[0],
                                         workers=1),
              "segmentation_accuracy_fpn": dict(model="tf_efficientnet_lite1", decoder="fpn", image_size=96,
                                                epochs=1, seeds=[0]),
              "time_to_accuracy": dict(model="tf_efficientnet_lite1", image_size=64, epochs=2, seeds=[0]),
              "distillation": dict(_DISTILL, image_size=64, epochs=1, seeds=[0], speed_rounds=3,
                                   teacher_image_size=64, teacher_epochs=1),
              "pseudo_labels": dict(_DISTILL, image_size=64, epochs=1, seeds=[0], teacher_image_size=64,
                                    teacher_epochs=1),
              # random init, no weights: checks the harness only
              "dev_classification": dict(model="test_efficientnet", image_size=32, epochs=1, seeds=[0],
                                         arms=["defaults", "no_label_smoothing"], random_init=True)},
}
RUNNERS = {
    "train_overhead": lambda p: bench_train.run(p),
    "inference": lambda p: bench_inference.run(p),
    "input_pipeline": lambda p: bench_pipeline.run(p),
    "predict_pipeline": lambda p: bench_predict_pipeline.run(p),
    "gpu_predict_pipeline": lambda p: bench_predict_pipeline.run(p, device="cuda"),
    "cached_probe": lambda p: bench_cache.run(p),
    "scaling": lambda p: bench_scaling.run(p),
    "detection": lambda p: bench_detection.run(p),
    "detection_accuracy": lambda p: bench_detection_accuracy.run(p),
    "segmentation_fpn": lambda p: bench_segmentation.run(p),
    "segmentation_unet": lambda p: bench_segmentation.run(p),
    "segmentation_accuracy_fpn": lambda p: bench_segmentation_accuracy.run(p),
    "segmentation_accuracy_unet": lambda p: bench_segmentation_accuracy.run(p),
    "side_by_side": lambda p: bench_side_by_side.run(p),
    "time_to_accuracy": lambda p: bench_time_to_accuracy.run(p),
    "distillation": lambda p: bench_distill.run(p),
    "pseudo_labels": lambda p: bench_distill.run_pseudo(p),
    "distillation_glyphs": lambda p: bench_distill.run(_on_dev_set(p), name="distillation_glyphs"),
    "pseudo_labels_glyphs": lambda p: bench_distill.run_pseudo(_on_dev_set(p), name="pseudo_labels_glyphs"),
    "dev_classification": lambda p: bench_dev_suite.run_task("classification", "dev_classification", p),
    "dev_classification_10ep": lambda p: bench_dev_suite.run_task(
        "classification", "dev_classification_10ep", p
    ),
    "dev_detection": lambda p: bench_dev_suite.run_task("detection", "dev_detection", p),
    "dev_segmentation": lambda p: bench_dev_suite.run_task("segmentation", "dev_segmentation", p),
    "gpu_train": lambda p: bench_train.run(p, accelerator="gpu", precision="bf16-mixed", target=">= 0.97"),
    "gpu_inference": lambda p: bench_inference.run(p, device="cuda"),
    "gpu_scaling": lambda p: bench_scaling.run(p, device="cuda"),
}
# Published reference for the GPU training number (timm's benchmark table: RTX 3090, AMP, batch 96).
TIMM_B4_TRAIN_RTX3090 = 293.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("cpu", "gpu", "accuracy"), default="cpu")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="the < 10 min profile")
    profile.add_argument("--smoke", action="store_true", help="seconds; tiny model; for tests")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--det-data", type=Path, default=None, help="accuracy: COCO-format real-image set")
    parser.add_argument("--seg-data", type=Path, default=None,
                        help="accuracy: seg_folder real-image set (images/ + masks/ + classes.txt)")
    parser.add_argument("--cls-data", type=Path, default=None,
                        help="accuracy: class-folder real-image set (train/<class>/, val/<class>/)")
    parser.add_argument("--weights", type=Path, default=None, help="accuracy: timm-layout ImageNet weights")
    parser.add_argument("--student-weights", type=Path, default=None,
                        help="accuracy (distillation, pseudo_labels): the student's timm-layout weights")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "results" / "runs" / "acc.json",
                        help="accuracy: finished runs, reused when their composed config matches")
    parser.add_argument("--dev-root", type=Path, default=None,
                        help="accuracy (dev_*): the folder of scripts/build_dev_sets.py's sets")
    parser.add_argument("--dev-arms", default="",
                        help="accuracy (dev_*): comma-separated arms to run (default: every arm of the task; "
                        "the defaults always run)")
    parser.add_argument("--dev-cached-only", action="store_true",
                        help="accuracy (dev_*): report the runs the cache holds, train nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="accuracy: set a profile parameter of every selected entry (VALUE read as JSON, "
                             "else a string), e.g. --param image_size=96; stated in the results")
    return parser.parse_args(argv)


def _run_one(name: str, params: dict) -> Result:
    start = time.perf_counter()
    try:
        result = RUNNERS[name](params)
    except Exception as e:  # one broken benchmark must not lose the others' results
        result = Result(name=name, title=name, status="error", reason=f"{type(e).__name__}: {e}",
                        extra={"traceback": traceback.format_exc(limit=6)})
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def _merge(previous: dict, rerun: dict) -> dict:
    """``--only``: replace those benchmarks in the earlier record, noting when and how they re-ran."""
    fresh = {r["name"]: r for r in rerun["results"]}
    names = sorted(fresh)
    results = [fresh.pop(old["name"], old) for old in previous["results"]] + list(fresh.values())
    note = {k: rerun[k] for k in ("command", "started_utc", "wall_s")}
    note["load_average"] = [rerun["machine"]["load_average_start"], rerun["machine"]["load_average_end"]]
    note["cpu"] = rerun["machine"].get("cpu")  # may differ from the machine of the first record
    note["benchmarks"] = names
    return {**previous, "results": results, "reruns": [*previous.get("reruns", []), note]}


def _summary_line(r: Result) -> str:
    if r.status != "ok":
        return f"{r.name}: {r.status} ({r.reason})"
    if r.ratio is None:
        return f"{r.name}: done"
    verdict = {True: "PASS", False: "MISS", None: ""}[r.passed]
    return f"{r.name}: ratio {r.ratio:.3f} (target {r.target}) {verdict}"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = ("lightning.pytorch", "lightning.fabric", "b4transfer")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _main(args, argv)
    finally:  # leave the caller's logging as it was (tests run this in-process)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _on_dev_set(p: dict) -> dict:
    """``p`` with ``cls_data`` set to the dev set ``p["dev_set"]`` under ``--dev-root`` (when given; a
    missing set is the dev suite's error naming its build command)."""
    if not p.get("dev_root"):
        return p
    folders, _ = bench_dev_suite.resolve_sets({**p, "sets": [p["dev_set"]], "held_out": []}, "classification")
    return {**p, "cls_data": folders[p["dev_set"]]}


def _value(text: str):
    """``text`` as JSON where it parses, else a string; ``[a, b]`` with bare words is a list of them."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):  # sets=[cls_emoji] (unquoted, as a shell leaves it)
        return [_value(item.strip()) for item in inner[1:-1].split(",") if item.strip()]
    return text


def _params(pairs: list[str]) -> dict:
    """``--param NAME=VALUE`` pairs as a dict (VALUE parsed by :func:`_value`)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param {pair!r}: expected NAME=VALUE, e.g. --param image_size=96")
        out[name] = _value(value)
    return out


def _main(args: argparse.Namespace, argv: list[str] | None) -> int:
    profile = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    started = datetime.now(timezone.utc)
    if args.suite == "gpu" and not torch.cuda.is_available():
        reason = "no CUDA device here (torch.cuda.is_available() is False); GPU numbers were not measured."
        print(f"--suite gpu: {reason}")
        results = [Result(name=n, title=n, status="skipped", reason=reason) for n in GPU_PROFILES[profile]]
    else:
        table = {"gpu": GPU_PROFILES, "accuracy": ACCURACY_PROFILES}.get(args.suite, PROFILES)[profile]
        if args.suite == "accuracy":
            paths = {"data": args.det_data, "seg_data": args.seg_data, "cls_data": args.cls_data,
                     "weights": args.weights, "student_weights": args.student_weights, "cache": args.cache,
                     "dev_root": args.dev_root, "dev_arms": args.dev_arms,
                     "cached_only": args.dev_cached_only}
            table = {name: {**params, **paths, **_params(args.param)} for name, params in table.items()}
        names = [n for n in table if not args.only or n in args.only.split(",")]
        results = []
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} ...", flush=True)
            results.append(_run_one(name, table[name]))
            print(f"    {_summary_line(results[-1])} [{results[-1].seconds:.0f} s]", flush=True)
            if name == "gpu_train" and results[-1].status == "ok":
                results[-1].extra["timm_published_rtx3090_amp_b96_images_per_s"] = TIMM_B4_TRAIN_RTX3090
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    record = {
        "suite": args.suite,
        "profile": profile,
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "machine": info,
        "results": [r.to_dict() for r in results],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{args.suite}-{profile}.json"
    wall = record["wall_s"]
    if args.only and out.is_file():
        record = _merge(json.loads(out.read_text()), record)
    out.write_text(json.dumps(record, indent=2) + "\n")
    render(args.out_dir, args.markdown)
    print(f"wrote {out} and {args.markdown} in {wall:.0f} s")
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
