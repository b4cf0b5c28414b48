"""Segmentation accuracy parity: the library beside segmentation_models_pytorch, same encoder and weights.

Arms, each over the same seeds, the same data (a ``seg_folder`` set of real images), the same timm
encoder and weights file, the same epochs and canvas size, for the decoder ``decoder`` (``fpn`` or
``unet``):

* ``library`` — ``python run.py task=segmentation data=seg_folder head.decoder=...`` with the library's
  defaults (nothing else overridden but data, model, weights, image size, epochs and seed);
* ``smp`` — :mod:`benchmarks.plain_segmentation`: ``smp.FPN`` / ``smp.Unet`` on ``tu-<model>`` trained by
  a written-out PyTorch loop (SMP's example recipe);
* ``library_plain_recipe`` — the library given the plain loop's settings (a diagnostic; ``arms`` in a
  profile may leave it out).

It reports the final validation mIoU (mean ± sd over seeds) per arm and the ratio library / smp (target
>= 1.0). Finished runs are kept in the accuracy suite's JSON cache (``cache=``) under a key made of the
fully composed config (library) or the loop's recipe and settings (smp), and reused. The train-step time
is :mod:`benchmarks.bench_segmentation`'s (interleaved in one process).
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_detection_accuracy import (
    RunCache,
    config_key,
    mean_sd,
    recipe_key,
    run_captured,
    run_plain_loop,
)
from benchmarks.common import Result

ROOT = Path(__file__).resolve().parents[1]
SMP_NAMES = {"fpn": "FPN", "unet": "Unet"}
# The plain loop's recipe (benchmarks.plain_segmentation.RECIPE) in the library's config keys.
PLAIN_RECIPE_OVERRIDES = (
    "optim.lr=1e-4",
    "optim.weight_decay=0",
    "ema.enabled=false",
    "scheduler=none",
    "data.batch_size=8",
    "data.augment.scale=[1.0,1.0]",
    "data.augment.color_jitter=0",
    "data.resize=letterbox",
)


def cli_overrides(data_root, *, decoder, weights, model_name, image_size, epochs, seed, overrides=()):
    """The ``run.py`` overrides of one library run (its run directory aside)."""
    return [
        "task=segmentation",
        "data=seg_folder",
        f"data.root={data_root}",
        f"head.decoder={decoder}",
        f"model.name={model_name}",
        f"model.weights={weights}",
        f"data.image_size={image_size}",
        f"trainer.max_epochs={epochs}",
        f"seed={seed}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]


def read_miou(metrics_csv: Path) -> list[dict]:
    """Rows of ``metrics.csv`` that carry ``val/miou``: ``[{"epoch", "miou"}]``."""
    with open(metrics_csv, newline="") as f:
        return [
            {"epoch": int(r["epoch"]), "miou": float(r["val/miou"])}
            for r in csv.DictReader(f)
            if r.get("val/miou")
        ]


def library_run(data_root, *, threads=None, overrides=(), **settings) -> dict:
    with tempfile.TemporaryDirectory(prefix="b4t-segacc-") as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        args = cli_overrides(data_root, overrides=overrides, **settings)
        run_captured([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"], threads, tmp)
        summary = json.loads((run_dir / "summary.json").read_text())
        return {
            "epochs": read_miou(run_dir / "metrics.csv"),
            "wall_s": round(time.perf_counter() - start, 1),
            "train_images_per_s": summary.get("train_images_per_s"),
        }


def plain_run(data_root, *, decoder, weights, model_name, image_size, epochs, seed, threads=None) -> dict:
    return run_plain_loop(
        "benchmarks.plain_segmentation", data_root, threads, arch=decoder, weights=weights, model=model_name,
        image_size=image_size, epochs=epochs, seed=seed,
    )[0]


def plain_key(data_root, **settings) -> str:
    from benchmarks.plain_segmentation import RECIPE

    return recipe_key("smp-", RECIPE, data_root, **settings)


def summarize(runs: list[dict]) -> dict:
    finals = [r["epochs"][-1]["miou"] for r in runs]
    m, s = mean_sd(finals)
    epochs = min(len(r["epochs"]) for r in runs)
    return {
        "miou": round(m, 4),
        "miou_sd": round(s, 4),
        "per_seed_miou": finals,
        "per_epoch_miou": [
            round(sum(r["epochs"][e]["miou"] for r in runs) / len(runs), 4) for e in range(epochs)
        ],
        "commits": sorted({r.get("commit", "?") for r in runs}),
        "wall_s": round(sum(r["wall_s"] for r in runs) / len(runs), 1),
        "reused": sum(bool(r.get("reused")) for r in runs),
    }


def run(p: dict) -> Result:
    """``p``: seg_data, weights, model, decoder, image_size, epochs, seeds, cache, threads."""
    decoder = p.get("decoder", "fpn")
    name = f"segmentation_accuracy_{decoder}"
    if not p.get("seg_data") or not p.get("weights"):
        return Result(
            name=name,
            title=f"Segmentation accuracy ({decoder}) vs SMP",
            status="skipped",
            reason="needs --seg-data DIR (a seg_folder set of real images) and --weights FILE",
        )
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return Result(
            name=name,
            title=f"Segmentation accuracy ({decoder}) vs SMP",
            status="skipped",
            reason='segmentation_models_pytorch is not installed (pip install "b4transfer[bench]")',
        )
    data = p["seg_data"]
    common = {
        "decoder": p.get("decoder", "fpn"),
        "weights": p["weights"],
        "model_name": p["model"],
        "image_size": p["image_size"],
        "epochs": p["epochs"],
    }
    # library_plain_recipe is a diagnostic (is a gap the recipe or the code?): profiles may leave it out
    library_arms = {"library": (), "library_plain_recipe": PLAIN_RECIPE_OVERRIDES}
    library_arms = {a: o for a, o in library_arms.items() if a in p.get("arms", library_arms)}
    cache, runs = RunCache(p.get("cache")), {"library": [], "smp": []} | {a: [] for a in library_arms}
    threads = p.get("threads", 1)
    for seed in p["seeds"]:
        for arm, overrides in library_arms.items():
            key = config_key(cli_overrides(data, seed=seed, overrides=overrides, **common))
            result, reused = cache.measure(
                key,
                lambda o=overrides, s=seed: library_run(data, threads=threads, overrides=o, seed=s, **common),
                arm=arm,
                seed=seed,
            )
            runs[arm].append(result | {"reused": reused})
        key = plain_key(data, seed=seed, **common)
        result, reused = cache.measure(
            key, lambda s=seed: plain_run(data, seed=s, threads=threads, **common), arm="smp", seed=seed
        )
        runs["smp"].append(result | {"reused": reused})
    stats = {arm: summarize(r) for arm, r in runs.items()}
    lib, smp = stats["library"], stats["smp"]
    return Result(
        name=name,
        title=f"Segmentation accuracy ({common['decoder']}), {p['model']} @ {p['image_size']}, {p['epochs']} "
        f"epochs, seeds {list(p['seeds'])}: library defaults vs smp.{SMP_NAMES[common['decoder']]}",
        settings={k: p[k] for k in ("model", "image_size", "epochs", "seeds")}
        | {
            "data": str(data),
            "decoder": common["decoder"],
            "plain_recipe_overrides": " ".join(PLAIN_RECIPE_OVERRIDES),
        },
        library={"median": lib["miou"], "unit": "mIoU", "samples": lib["per_seed_miou"]},
        baseline={"median": smp["miou"], "unit": "mIoU", "samples": smp["per_seed_miou"]},
        ratio=round(lib["miou"] / smp["miou"], 3) if smp["miou"] else None,
        ratio_kind="final validation mIoU (mean over seeds), library defaults / SMP plain loop",
        target=">= 1.0",
        extra={"arms": stats},
    ).check()
