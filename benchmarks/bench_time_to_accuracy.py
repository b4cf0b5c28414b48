"""Time to accuracy: how soon the library's defaults reach what a naive plain-PyTorch loop ends with.

Two arms, each over the same seeds, on the same class-folder set of real images (``DATA/train/<class>``,
``DATA/val/<class>``), the same real ImageNet weights file, the same model, image size and epochs:

* ``library`` — ``python run.py data=folder ...``: the library's defaults, nothing overridden but data,
  model, weights, image size, epochs and seed (and the progress bar off);
* ``naive`` — :mod:`benchmarks.plain_classification`: AdamW at a constant 1e-3, fp32, plain cross-entropy,
  random-resized-crop + flip, the library's default batch size and DataLoader workers.

Both report, after every epoch, validation top-1 accuracy and the wall seconds since their process started
(imports, data and model creation included): the library's ``time/elapsed_s`` (logged by its
``ThroughputMeter`` at each training epoch end, after that epoch's validation and checkpoint writes), the
naive loop's right after its validation. Per seed: ``A`` and ``T``, the naive loop's final accuracy and its
time at the end of its last epoch; ``t_lib``, the library's time at the end of its first epoch with
``val/acc1 >= A`` (as many validation images right or more; never: ``None``). The ratio is
**mean(t_lib) / mean(T)** over the seeds (target <= 0.6; none when some seed never reaches ``A``, which
misses the target); the per-seed ratios and their mean are reported beside it.

Each run is a subprocess with one OpenMP thread, run one at a time (the arms alternate which goes first
from seed to seed); finished runs are kept in the accuracy suite's JSON run cache and reused. A reused
run's times are from when it ran: the result records each run's commit and load average.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_detection_accuracy import (
    ROOT,
    RunCache,
    config_key,
    mean_sd,
    recipe_key,
    run_captured,
    run_plain_loop,
)
from benchmarks.common import Result

NAME, TARGET = "time_to_accuracy", "<= 0.6"


def cli_overrides(data_root, *, weights, model_name, image_size, epochs, seed, extra=()) -> list[str]:
    """The ``run.py`` overrides of one library run (its run directory aside): the defaults otherwise, and
    ``extra`` (a recipe study's variant) last."""
    return [
        "data=folder",
        f"data.root={data_root}",
        f"model.name={model_name}",
        f"model.weights={weights}",
        f"data.image_size={image_size}",
        f"trainer.max_epochs={epochs}",
        f"seed={seed}",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def default_batch_size(args: list[str]) -> int:
    """``data.batch_size`` of the config ``run.py args`` composes (the naive loop uses the same)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return int(compose(config_name="config", overrides=args).data.batch_size)


def read_epochs(metrics_csv: Path) -> list[dict]:
    """``[{"epoch", "acc1", "elapsed_s"}]`` from ``metrics.csv``: ``val/acc1`` and ``time/elapsed_s`` are
    logged in different rows of the same epoch."""
    acc, elapsed = {}, {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/acc1"):
                acc[int(row["epoch"])] = float(row["val/acc1"])
            if row.get("time/elapsed_s"):
                elapsed[int(row["epoch"])] = float(row["time/elapsed_s"])
    if acc and not elapsed:
        raise RuntimeError(f"{metrics_csv} has no time/elapsed_s (a library older than the metric?)")
    return [
        {"epoch": e, "acc1": acc[e], "elapsed_s": round(elapsed[e], 2)} for e in sorted(acc) if e in elapsed
    ]


def library_run(data_root, *, threads: int | None = 1, **settings) -> dict:
    with tempfile.TemporaryDirectory(prefix="b4t-tta-") as tmp:
        run_dir = Path(tmp) / "run"
        args = cli_overrides(data_root, **settings)
        _, wall = run_captured(
            [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"], threads, tmp
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        epochs = read_epochs(run_dir / "metrics.csv")
        return {
            "epochs": epochs,
            "wall_s": epochs[-1]["elapsed_s"],
            "process_wall_s": round(wall, 1),
            "train_images_per_s": summary.get("train_images_per_s"),
            "val_images": summary.get("val_images"),
            "precision_plan": summary.get("precision_plan"),
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        }


def naive_run(data_root, *, weights, model_name, image_size, epochs, seed, batch_size, threads=1) -> dict:
    result, wall = run_plain_loop(
        "benchmarks.plain_classification", data_root, threads, weights=weights, model=model_name,
        image_size=image_size, epochs=epochs, seed=seed, batch_size=batch_size,
    )
    return result | {
        "process_wall_s": round(wall, 1),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def naive_key(data_root, **settings) -> str:
    from benchmarks.plain_classification import RECIPE

    return recipe_key("naive-cls-", RECIPE, data_root, **settings)


def time_to_reach(epochs: list[dict], target: float, val_images: int | None = None) -> dict | None:
    """The first epoch of ``epochs`` whose ``acc1`` reaches ``target`` (as many of ``val_images`` right:
    half an image of slack for float32 metrics), or ``None``."""
    slack = 0.5 / val_images if val_images else 1e-6
    return next((e for e in epochs if e["acc1"] >= target - slack), None)


def seed_report(seed: int, library: dict, naive: dict) -> dict:
    """One seed: the naive loop's final ``A`` and time ``T``, the library's ``t_lib`` and the ratio."""
    target, naive_s = naive["epochs"][-1]["acc1"], naive["wall_s"]
    hit = time_to_reach(library["epochs"], target, naive.get("val_images"))
    return {
        "seed": seed,
        "naive_acc1": round(target, 4),
        "naive_s": naive_s,
        "library_acc1": round(library["epochs"][-1]["acc1"], 4),
        "library_s": library["wall_s"],
        "t_lib": hit["elapsed_s"] if hit else None,
        "reached_at_epoch": hit["epoch"] + 1 if hit else None,  # 1-based
        "ratio": round(hit["elapsed_s"] / naive_s, 3) if hit and naive_s else None,
    }


def ratios(reports: list[dict]) -> dict:
    """mean(t_lib) / mean(T) over seeds and the mean of the per-seed ratios (``None`` if a seed never
    reached its naive accuracy)."""
    reached = all(r["t_lib"] is not None for r in reports)
    mean_t = statistics.fmean(r["naive_s"] for r in reports)
    return {
        "ratio_of_means": round(statistics.fmean(r["t_lib"] for r in reports) / mean_t, 3)
        if reached and mean_t
        else None,
        "mean_of_seed_ratios": round(statistics.fmean(r["ratio"] for r in reports), 3) if reached else None,
        "seeds_never_reached": [r["seed"] for r in reports if r["t_lib"] is None],
    }


def summarize(runs: list[dict]) -> dict:
    finals = [r["epochs"][-1]["acc1"] for r in runs]
    m, s = mean_sd(finals)
    epochs = min(len(r["epochs"]) for r in runs)
    return {
        "acc1": round(m, 4),
        "acc1_sd": round(s, 4),
        "per_seed_acc1": [round(v, 4) for v in finals],
        "per_epoch_acc1": [
            round(statistics.fmean(r["epochs"][e]["acc1"] for r in runs), 4) for e in range(epochs)
        ],
        "per_epoch_elapsed_s": [
            round(statistics.fmean(r["epochs"][e]["elapsed_s"] for r in runs), 2) for e in range(epochs)
        ],  # to 0.01 s as each run's: at 0.1 s a short smoke epoch tied with the one before it
        "wall_s": round(statistics.fmean(r["wall_s"] for r in runs), 2),
        "commits": sorted({r.get("commit", "?") for r in runs}),
        "reused": sum(bool(r.get("reused")) for r in runs),
    }


def run(p: dict) -> Result:
    """``p``: cls_data, weights, model, image_size, epochs, seeds, cache (JSON path or None), threads."""
    title = "Time to accuracy: library defaults vs a naive PyTorch loop"
    if not p.get("cls_data") or not p.get("weights"):
        return Result(
            name=NAME,
            title=title,
            status="skipped",
            reason="needs --cls-data DIR (a class-folder set of real images: train/<class>/, "
            "val/<class>/) and --weights FILE",
        )
    data = Path(p["cls_data"])
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise ValueError(f"--cls-data {data} needs train/<class>/ and val/<class>/ folders")
    common = {
        "weights": p["weights"],
        "model_name": p["model"],
        "image_size": p["image_size"],
        "epochs": p["epochs"],
    }
    threads = p.get("threads", 1)
    batch_size = default_batch_size(cli_overrides(data, seed=0, **common))
    cache, runs, reports = RunCache(p.get("cache")), {"library": [], "naive": []}, []
    for i, seed in enumerate(p["seeds"]):
        args = cli_overrides(data, seed=seed, **common)
        plans = {
            "library": (
                "tta-" + config_key(args),
                lambda s=seed: library_run(data, threads=threads, seed=s, **common),
            ),
            "naive": (
                naive_key(data, seed=seed, batch_size=batch_size, **common),
                lambda s=seed: naive_run(data, seed=s, batch_size=batch_size, threads=threads, **common),
            ),
        }
        for arm in ["naive", "library"] if i % 2 == 0 else ["library", "naive"]:  # alternate who goes first
            key, fn = plans[arm]
            result, reused = cache.measure(key, fn, arm=arm, seed=seed)
            runs[arm].append(result | {"reused": reused})
        reports.append(seed_report(seed, runs["library"][-1], runs["naive"][-1]))
    stats = {arm: summarize(r) for arm, r in runs.items()}
    r = ratios(reports)
    lib_t = [x["t_lib"] for x in reports]
    result = Result(
        name=NAME,
        title=f"Time to accuracy, real weights + real images ({p['model']} @ {p['image_size']}, "
        f"{p['epochs']} epochs, seeds {list(p['seeds'])}): library defaults vs a naive PyTorch loop",
        settings={k: p[k] for k in ("model", "image_size", "epochs", "seeds")}
        | {"data": str(data), "batch_size": batch_size, "threads": threads},
        library={
            "median": statistics.fmean(lib_t) if None not in lib_t else None,
            "unit": "s to the naive final acc1",
            "samples": lib_t,
        },
        baseline={
            "median": statistics.fmean(x["naive_s"] for x in reports),
            "unit": "s (naive, all epochs)",
            "samples": [x["naive_s"] for x in reports],
        },
        ratio=r["ratio_of_means"],
        ratio_kind="mean over seeds of the library's seconds (since process start) to its first epoch end "
        "with val/acc1 >= the naive loop's final val acc1, / mean of the naive loop's seconds to its last "
        "epoch end",
        target=TARGET,
        extra={
            "mean_of_seed_ratios": r["mean_of_seed_ratios"],
            "seeds_never_reached": r["seeds_never_reached"],
            "library_acc1": f"{stats['library']['acc1']:.4f} ± {stats['library']['acc1_sd']:.4f}",
            "naive_acc1": f"{stats['naive']['acc1']:.4f} ± {stats['naive']['acc1_sd']:.4f}",
            "per_seed": reports,
            "arms": stats,
        },
    ).check()
    if r["seeds_never_reached"]:
        result.passed = False  # the library never reached the naive loop's accuracy on some seed
    return result
