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
The library runs go through the CLI (a subprocess per run), exactly as a user runs them; the plain
loop runs in a subprocess too, so that ``jobs`` runs can go side by side (one torch thread each).

Every finished run is kept in a JSON cache (``cache=``, shared with ``scripts/detection_study.py``)
under a key made of the run's **fully composed config** (every key of ``conf/`` after the overrides,
seed included) or, for the plain loop, its recipe and settings. A run whose key is already there is
not repeated; the result records the git commit each run was made at and which runs were reused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
    "head.anchor_sizes=null",  # torchvision's anchors by stride (the defaults fit them to the boxes)
    "head.head_norm=null",
    "head.box_loss=null",
)


def cli_overrides(data_root, *, weights, model_name, image_size, epochs, seed, overrides=()) -> list[str]:
    """The ``run.py`` overrides of one library run (its run directory aside)."""
    return [
        "task=detection",
        "data=coco",
        f"data.root={data_root}",
        f"model.name={model_name}",
        f"model.weights={weights}",
        f"data.image_size={image_size}",
        f"trainer.max_epochs={epochs}",
        f"seed={seed}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]


def config_key(args: list[str]) -> str:
    """Hash of the config ``run.py args`` composes from this checkout's ``conf/`` (``run_dir`` aside)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=args), resolve=False)
    cfg.pop("run_dir", None)
    text = json.dumps(_numbers_as_floats(_without_neutral(cfg)), sort_keys=True)
    return "lib-" + hashlib.sha1(text.encode()).hexdigest()[:16]


# Keys added to conf/ after runs were cached, with the value that trains exactly as before the key
# existed: left out of run keys, so that adding a config key does not orphan every finished run. When you
# add a key whose default changes nothing, list it here; a key whose default changes training must not be.
NEUTRAL = {
    "data.sampler": None,
    "early_stopping.patience": None,
    "early_stopping.min_delta": 0.0,
    "loss.class_weights": None,
    "loss.gamma": 2.0,
    "loss.name": "ce",
    "head.head_norm": None,
    "head.box_loss": None,
    "data.kfold": None,
    "data.fold": None,
    "seeds": None,
    "tta": None,
    "predict.slice": None,
    "predict.slice_overlap": 0.2,
    "export.int8_calibration_images": 64.0,  # after training
    "export.parity": None,
    "export.parity_tolerance": 0.01,
    "export.card": None,
    "export.license": "apache-2.0",
    "checkpoint.best_weights_only": True,  # what the best file keeps, not how it was trained
    "predict.runtime": "torch",  # prediction / evaluation only
    "export.backbone": True,  # after training: the export also holds the backbone alone
    "predict.explain": False,  # issue 28: after training (mode=predict)
    "predict.explain_method": "layercam",
    "predict.explain_stride": 16,
    "distill.teacher": None,  # issue 28: mode=distill only (a mode=distill run names its teacher)
    "distill.student": None,
    "distill.alpha": 0.5,
    "distill.temperature": 4.0,
    "distill.unlabeled": None,
    "distill.pseudo_threshold": 0.9,
}
# Config sections added after the cached runs that act only before or after training (the quick audit
# hashes files; calibration, error analysis and pushing run after the last epoch): never part of a key.
AFTER_TRAINING = ("audit", "calibrate", "errors", "push")
# The config keys the cached runs were keyed with (every leaf key of the composed detection config then).
KNOWN_KEYS = ROOT / "benchmarks" / "results" / "runs" / "acc_config_keys.json"


def _without_neutral(cfg: dict) -> dict:
    cfg = {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in AFTER_TRAINING}
    for dotted, value in NEUTRAL.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == value:
            del node[leaf]
    for key in [k for k, v in cfg.items() if v == {} and k in {d.split(".")[0] for d in NEUTRAL}]:
        del cfg[key]
    return cfg


def _numbers_as_floats(node):
    """``10`` and ``10.0`` (a command-line ``=10`` vs a YAML ``10.0``) are the same setting."""
    if isinstance(node, dict):
        return {k: _numbers_as_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_numbers_as_floats(v) for v in node]
    return float(node) if isinstance(node, int) and not isinstance(node, bool) else node


def plain_key(data_root, *, weights, model_name, image_size, epochs, seed, recipe=None, device="cpu") -> str:
    from benchmarks.plain_detection import RECIPE

    spec = dict(
        recipe={**RECIPE, **(recipe or {})},
        data=str(data_root),
        weights=str(weights),
        model=model_name,
        image_size=image_size,
        epochs=epochs,
        seed=seed,
    ) | ({"device": device} if device != "cpu" else {})  # the CPU runs' keys as before devices were added
    return "plain-" + hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def run_captured(cmd: list[str], threads: int | None, cwd: str) -> tuple[str, float]:
    """``(stdout, seconds)`` of ``cmd`` with ``threads`` OpenMP threads; its stderr tail if it fails."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - start


def library_run(data_root, *, threads: int | None = None, **settings) -> dict:
    """One ``python run.py task=detection data=coco ...`` run: per-epoch ``map`` / ``map_50``."""
    with tempfile.TemporaryDirectory(prefix="b4t-detacc-") as tmp:
        run_dir = Path(tmp) / "run"
        args = cli_overrides(data_root, **settings)
        _, wall = run_captured(
            [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"], threads, tmp
        )
        return {"epochs": read_epochs(run_dir / "metrics.csv"), "wall_s": round(wall, 1)}


def run_plain_loop(module: str, data_root, threads: int | None, **flags) -> tuple[dict, float]:
    """``python -m module DATA --flag value ...`` (``_`` in a flag's name as ``-``) in a subprocess: the
    ``RESULT {json}`` of its last line and its seconds. The plain loops of every accuracy benchmark."""
    cmd = [sys.executable, "-m", module, str(data_root)]
    for flag, value in flags.items():
        cmd += [f"--{flag.replace('_', '-')}", str(value)]
    out, wall = run_captured(cmd, threads, str(ROOT))
    return json.loads(out.rsplit("RESULT ", 1)[1]), wall


def recipe_key(prefix: str, recipe: dict, data_root, **settings) -> str:
    """A cache key of a plain loop's run: its recipe, data and settings."""
    spec = {"recipe": recipe, "data": str(data_root), **{k: str(v) for k, v in settings.items()}}
    return prefix + hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def plain_run(
    data_root, *, weights, model_name, image_size, epochs, seed, recipe=None, threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """One run of :mod:`benchmarks.plain_detection` in a subprocess (``wall_s``: its training loop;
    ``process_wall_s``: the whole process, as a library run's ``wall_s``)."""
    result, wall = run_plain_loop(
        "benchmarks.plain_detection", data_root, threads, weights=weights, model=model_name,
        image_size=image_size, epochs=epochs, seed=seed, recipe=json.dumps(recipe or {}), device=device,
    )
    return result | {"process_wall_s": round(wall, 1)}


class RunCache:
    """Finished runs by key, in a JSON file (written after every run)."""

    def __init__(self, path: str | Path | None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path else None
        self.read_only = read_only  # missing runs are left out instead of run
        self.lock = threading.Lock()
        self.runs = json.loads(self.path.read_text()) if self.path and self.path.is_file() else {}

    def measure(self, key: str, fn, **info) -> tuple[dict, bool]:
        """``(result, reused)``: the run cached under ``key``, else ``fn()`` (read-only: ``None``)."""
        if key not in self.runs and self.path and self.path.is_file():  # another process may have run it
            self.runs = json.loads(self.path.read_text())
        if key in self.runs:
            return self.runs[key], True
        if self.read_only:
            return None, False
        result = fn() | info | {"commit": _commit()}
        with self.lock:
            self._store(key, result)
        return result, False

    def _store(self, key: str, result: dict) -> None:
        if self.path:  # re-read: another process may have added runs meanwhile
            runs = json.loads(self.path.read_text()) if self.path.is_file() else {}
            runs[key] = result
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(runs, indent=1) + "\n")
            self.runs = runs
        else:
            self.runs[key] = result


# A library run on the GPU (settings["device"] == "cuda"): one GPU, and few loader workers, since several
# runs share the machine side by side.
GPU_OVERRIDES = ["trainer=gpu", "data.num_workers=4"]


def plan(arm: str, overrides, seed: int, settings: dict, threads: int | None = 1):
    """``(key, run, info)`` of one arm at one seed: ``overrides == "plain"`` is the plain loop."""
    data = settings["data"]
    common = {k: settings[k] for k in ("weights", "model_name", "image_size", "epochs")} | {"seed": seed}
    device = settings.get("device", "cpu")
    if overrides == "plain":
        key = plain_key(data, device=device, **common)
        fn = lambda: plain_run(data, threads=threads, device=device, **common)  # noqa: E731
    else:
        overrides = [*overrides, *(GPU_OVERRIDES if device == "cuda" else [])]
        key = config_key(cli_overrides(data, overrides=tuple(overrides), **common))
        fn = lambda: library_run(data, overrides=tuple(overrides), threads=threads, **common)  # noqa: E731
    info = {
        "arm": arm,
        "seed": seed,
        "overrides": list(overrides) if overrides != "plain" else ["<plain loop>"],
        "setting": f"{common['model_name']}@{common['image_size']}x{common['epochs']}ep",
    }
    return key, fn, info


def measure_all(cache: RunCache, jobs: list[tuple[str, object, int]], settings: dict, workers: int = 1):
    """``[(arm, overrides, seed)]`` -> ``{arm: [results by seed]}``, ``workers`` runs side by side."""
    plans = [plan(*job, settings) for job in jobs]  # composing configs is not thread-safe: first, serially
    unique = list({p[0]: p for p in plans}.values())  # arms that compose the same config run once
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: cache.measure(p[0], p[1], **p[2]), unique)
        measured = dict(zip([p[0] for p in unique], results))
    done = [(info["arm"], *measured[key]) for key, _, info in plans]
    out: dict[str, list] = {}
    for arm, result, reused in done:
        if result is not None:
            out.setdefault(arm, []).append(result | {"reused": reused})
    return out


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
        "commits": sorted({r.get("commit", "?") for r in runs}),
        "reused": sum(bool(r.get("reused")) for r in runs),
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def run(p: dict) -> Result:
    """``p``: data, weights, model, image_size, epochs, seeds, cache (JSON path or None), workers."""
    if not p.get("data") or not p.get("weights"):
        return Result(
            name="detection_accuracy",
            title="Detection accuracy parity",
            status="skipped",
            reason="needs --det-data DIR (scripts/build_real_sets.py) and --weights FILE",
        )
    settings = {
        "data": p["data"],
        "weights": p["weights"],
        "model_name": p["model"],
        "image_size": p["image_size"],
        "epochs": p["epochs"],
    }
    arms = {"library": (), "plain": "plain", "library_plain_recipe": PLAIN_RECIPE_OVERRIDES}
    jobs = [(arm, overrides, seed) for seed in p["seeds"] for arm, overrides in arms.items()]
    runs = measure_all(RunCache(p.get("cache")), jobs, settings, workers=p.get("workers", 1))
    stats = {name: summarize(r) for name, r in runs.items()}
    lib, plain, recipe = stats["library"], stats["plain"], stats["library_plain_recipe"]
    ratios = {
        f"{metric}_ratio_vs_{name}": _ratio(lib[metric], other[metric])
        for name, other in (("plain", plain), ("library_plain_recipe", recipe))
        for metric in ("map_50", "map")
    }
    return Result(
        name="detection_accuracy",
        title=f"Detection accuracy, real weights + real images ({p['model']} @ {p['image_size']}, "
        f"{p['epochs']} epochs, seeds {list(p['seeds'])}): library defaults vs a plain PyTorch loop",
        settings={k: p[k] for k in ("model", "image_size", "epochs", "seeds")}
        | {"data": str(p["data"]), "plain_recipe_overrides": " ".join(PLAIN_RECIPE_OVERRIDES)},
        library={"median": lib["map_50"], "unit": "mAP@50", "samples": lib["per_seed_map_50"]},
        baseline={"median": plain["map_50"], "unit": "mAP@50", "samples": plain["per_seed_map_50"]},
        ratio=min(ratios.values()) if None not in ratios.values() else None,
        ratio_kind="the smallest of: final mAP@50 and mAP (means over seeds) of the library defaults / the "
        "plain loop's, and / the library given the plain loop's settings",
        target=">= 1.0",
        extra={**ratios, "arms": stats},
    ).check()
