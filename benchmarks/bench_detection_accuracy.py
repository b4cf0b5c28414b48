"""Detection accuracy parity: the library's defaults vs a plain PyTorch loop, real weights, real images.

Three arms, each over the same seeds, the same data (a COCO-format set of real images, e.g. the one
``scripts/build_real_sets.py`` builds), the same real ImageNet weights and the same epochs / image size:

* ``library`` — ``python run.py task=detection data=coco ...`` with the library's detection defaults
  (nothing else overridden but data, model, weights, image size, epochs and seed);
* ``plain`` — :mod:`benchmarks.plain_detection`, torchvision's RetinaNet + FPN on the same timm body
  trained by a written-out loop with the standard fine-tuning recipe;
* ``library_plain_recipe`` — the library given the plain loop's settings (what the issue measured).

It reports mAP@50 and mAP per epoch (mean over seeds) for each arm, and the ratio library / plain of
the final mean mAP@50 (target >= 1.0) — so that the defaults cannot fall behind a plain loop unnoticed.
The library runs go through the CLI (a subprocess per run), exactly as a user runs them.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Result

ROOT = Path(__file__).resolve().parents[1]
# The plain loop's recipe (benchmarks.plain_detection.RECIPE) in the library's config keys.
PLAIN_RECIPE_OVERRIDES = (
    "finetune.bn=frozen",
    "optim.backbone_lr_mult=0.1",
    "optim.weight_decay=1e-4",
    "scheduler=cosine",
    "data.batch_size=4",
    "head.fpn_channels=128",
    "ema.enabled=false",
    "data.augment.scale=[1.0,1.0]",
    "data.augment.color_jitter=0",
    "trainer.gradient_clip_val=10",
)


def library_run(
    data_root: str | Path,
    *,
    weights: str,
    model_name: str,
    image_size: int,
    epochs: int,
    seed: int,
    overrides: tuple[str, ...] | list[str] = (),
    threads: int | None = None,
) -> dict:
    """One ``python run.py task=detection data=coco`` run; per-epoch ``map`` / ``map_50`` from metrics.csv."""
    with tempfile.TemporaryDirectory(prefix="b4t-detacc-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable,
            str(ROOT / "run.py"),
            "task=detection",
            "data=coco",
            f"data.root={data_root}",
            f"model.name={model_name}",
            f"model.weights={weights}",
            f"data.image_size={image_size}",
            f"trainer.max_epochs={epochs}",
            f"seed={seed}",
            f"hydra.run.dir={run_dir}",
            "trainer.enable_progress_bar=false",
            *overrides,
        ]
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"library run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
        return {"epochs": read_epochs(run_dir / "metrics.csv"), "wall_s": round(wall, 1)}


def read_epochs(metrics_csv: Path) -> list[dict]:
    """Rows of ``metrics.csv`` that carry ``val/map``: ``[{"epoch", "map", "map_50"}]``."""
    out = []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/map"):
                out.append(
                    {
                        "epoch": int(row["epoch"]),
                        "map": float(row["val/map"]),
                        "map_50": float(row["val/map_50"]),
                    }
                )
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> dict:
    """Mean ± sd of the final mAP@50 / mAP over seeds, and the per-epoch means."""
    epochs = min(len(r["epochs"]) for r in runs)
    per_epoch = [
        {key: round(statistics.fmean(r["epochs"][e][key] for r in runs), 4) for key in ("map_50", "map")}
        for e in range(epochs)
    ]
    m50, s50 = mean_sd([r["epochs"][-1]["map_50"] for r in runs])
    m, s = mean_sd([r["epochs"][-1]["map"] for r in runs])
    return {
        "map_50": round(m50, 4),
        "map_50_sd": round(s50, 4),
        "map": round(m, 4),
        "map_sd": round(s, 4),
        "per_epoch": per_epoch,
        "per_seed_map_50": [r["epochs"][-1]["map_50"] for r in runs],
        "per_seed_map": [r["epochs"][-1]["map"] for r in runs],
        "wall_s": round(statistics.fmean(r["wall_s"] for r in runs), 1),
    }


def run(p: dict) -> Result:
    """``p``: data, weights, model, image_size, epochs, seeds."""
    from benchmarks.plain_detection import train_plain

    if not p.get("data") or not p.get("weights"):
        return Result(
            name="detection_accuracy",
            title="Detection accuracy parity",
            status="skipped",
            reason="needs --det-data DIR (scripts/build_real_sets.py) and --weights FILE",
        )
    common = dict(weights=p["weights"], model_name=p["model"], image_size=p["image_size"], epochs=p["epochs"])
    arms: dict[str, list[dict]] = {"library": [], "plain": [], "library_plain_recipe": []}
    for seed in p["seeds"]:
        arms["library"].append(library_run(p["data"], seed=seed, **common))
        arms["plain"].append(train_plain(p["data"], seed=seed, **common))
        arms["library_plain_recipe"].append(
            library_run(p["data"], seed=seed, overrides=PLAIN_RECIPE_OVERRIDES, **common)
        )
    stats = {name: summarize(runs) for name, runs in arms.items()}
    lib, plain = stats["library"], stats["plain"]
    return Result(
        name="detection_accuracy",
        title=f"Detection accuracy: library defaults vs a plain PyTorch loop, real weights + real images, "
        f"{p['model']} @ {p['image_size']}, {p['epochs']} epochs, seeds {list(p['seeds'])}",
        settings={k: p[k] for k in ("model", "image_size", "epochs", "seeds")}
        | {"data": str(p["data"]), "plain_recipe_overrides": list(PLAIN_RECIPE_OVERRIDES)},
        library={"median": lib["map_50"], "unit": "mAP@50", **lib},
        baseline={"median": plain["map_50"], "unit": "mAP@50", **plain},
        ratio=round(lib["map_50"] / plain["map_50"], 3) if plain["map_50"] else None,
        ratio_kind="final mAP@50, library defaults / plain loop (means over seeds)",
        target=">= 1.0",
        extra={
            "library_plain_recipe": stats["library_plain_recipe"],
            "map_ratio": round(lib["map"] / plain["map"], 3) if plain["map"] else None,
        },
    ).check()
