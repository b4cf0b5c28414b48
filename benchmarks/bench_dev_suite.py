"""The multi-dataset dev benchmark (issue 27): defaults vs a plain loop and the alternatives, per set.

For one task, on every set of the dev benchmark (``scripts/build_dev_sets.py``: ``DEV_SETS``, built under
``--dev-root``), each arm trains once per seed, arm by arm (every set and seed of an arm before the next
arm, so a run cut short leaves whole arms):

* classification (``data=folder``, final ``val/acc1``): ``defaults`` (nothing overridden but data, model,
  weights, image size, epochs and seed), ``naive`` (:mod:`benchmarks.plain_classification`, the same
  epochs and image size) and one knob of the defaults flipped per arm (:func:`cls_arms`);
* detection (``data=coco``, final ``val/map_50`` and ``val/map``): ``defaults`` (RetinaNet), ``fcos``,
  ``faster_rcnn`` (``head.detector``), ``plain`` (:mod:`benchmarks.plain_detection`, torchvision's
  RetinaNet in a written-out loop) and the recipe's knobs (:func:`det_arms`);
* segmentation (``data=seg_folder``, final ``val/miou``): ``defaults`` (semantic FPN), ``smp``
  (:mod:`benchmarks.plain_segmentation`: ``smp.FPN`` on the same encoder and weights in SMP's example
  loop) and the knobs (:func:`seg_arms`).

Per set and arm: mean ± sd over seeds of the final metric; then :func:`benchmarks.choice_rule.choose` per
metric. Held-out sets (``HELD_OUT``) are trained and reported, never voting. Every run is a subprocess with
one OpenMP thread, kept in the accuracy suite's JSON run cache (``--cache``) under the key of its composed
config (the naive and plain loops: their recipe and settings); a finished run is never repeated. The
library arms turn off what runs after the last epoch and changes no trained weight or per-epoch metric
(:data:`POST_TRAINING_OFF`), nothing else. ``cached_only`` reports what
the cache holds and trains nothing.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from benchmarks.bench_detection_accuracy import ROOT, RunCache, config_key, mean_sd, measure_all
from benchmarks.bench_time_to_accuracy import (
    cli_overrides,
    default_batch_size,
    library_run,
    naive_key,
    naive_run,
)
from benchmarks.choice_rule import METRICS, choose, combine
from benchmarks.common import Result

sys.path.insert(0, str(ROOT / "scripts"))
from build_dev_sets import DEV_SETS  # noqa: E402

NAIVE, PLAIN, SMP = "naive", "plain", "smp"  # the plain loops: arms whose overrides are these strings
BASELINES = {"classification": NAIVE, "detection": PLAIN, "segmentation": SMP}
# Alternatives that remove a knob the defaults turn on (the choice rule's "simpler" side).
SIMPLER = {"no_ema", "no_label_smoothing", "anchors_by_stride", "no_warmup", "batch_4"}


def det_arms(image_size: int) -> dict[str, list[str] | str]:
    """Every detection arm: the detectors, then the recipe's knobs one at a time (task/detection.yaml)."""
    up = max(image_size + 32, round(1.2 * image_size / 32) * 32)  # one step up (320 -> 384)
    return {
        "defaults": [],  # head.detector=retinanet
        PLAIN: PLAIN,
        "fcos": ["head.detector=fcos"],
        "faster_rcnn": ["head.detector=faster_rcnn"],
        "anchors_by_stride": ["head.anchor_sizes=null"],  # torchvision's anchors (default: auto, fitted)
        "no_warmup": ["scheduler.warmup_epochs=0"],  # scheduler/cosine.yaml: 1 epoch
        "batch_4": ["data.batch_size=4"],  # the data default that task/detection.yaml lowers to 2
        "scale_jitter": ["data.augment.scale=[0.75,1.25]"],  # multi-scale training (default [1.0, 1.0])
        "size_up": [f"data.image_size={up}"],  # the training and eval size
    }


def seg_arms(image_size: int) -> dict[str, list[str] | str]:
    """Every segmentation arm: SMP's loop, the other decoder, then the recipe's knobs one at a time
    (task/segmentation.yaml, data/_seg_common.yaml)."""
    up = max(image_size + 32, round(1.25 * image_size / 32) * 32)  # one step up (256 -> 320)
    return {
        "defaults": [],  # head.decoder=fpn
        SMP: SMP,
        "unet": ["head.decoder=unet"],
        "scale_jitter": ["data.augment.scale=[0.5,2.0]"],  # default [1.0, 1.0]: off
        "no_ema": ["ema.enabled=false"],  # config.yaml: true
        "size_up": [f"data.image_size={up}"],  # the training and eval canvas
    }

# After-training steps that change neither the trained weights nor the per-epoch val metrics (calibration,
# error analysis, export parity, model card: three more passes over val), off in every library arm.
POST_TRAINING_OFF = ["calibrate.enabled=false", "errors.enabled=false", "export.parity=false",
                     "export.card=false"]
# Per task: how the defaults are compared with the plain loop (``min``: the smallest per-set ratio; ``mean``:
# the ratio of the means over the sets), its target, and what the ratio is.
RATIOS = {
    "classification": ("min", ">= 1.0", "the smallest per-set ratio of the defaults' mean val acc1 to the "
                       "naive loop's (every set, held out included)"),
    "detection": ("mean", ">= 1.3", "the defaults' mAP@50 averaged over the sets (held out included) / the "
                  "plain torchvision RetinaNet loop's"),
    "segmentation": ("min", ">= 1.0", "the smallest per-set ratio of the defaults' mean val mIoU to SMP's "
                     "(smp.FPN, SMP's example loop; every set, held out included)"),
}
BUILD = "python scripts/build_dev_sets.py --out DIR --which all"


def cls_arms(image_size: int) -> dict[str, list[str] | str]:
    """Every classification arm: the overrides that flip one of the current defaults (conf/)."""
    up = max(image_size + 32, round(1.25 * image_size / 32) * 32)  # one step up (128 -> 160)
    return {
        "defaults": [],
        NAIVE: NAIVE,
        "layer_decay_0.75": ["optim.layer_decay=0.75"],  # task/classification.yaml: null (reverted)
        "backbone_lr_0.1": ["optim.backbone_lr_mult=0.1"],  # optim/adamw.yaml: 1.0
        "lp_ft": ["finetune=freeze_unfreeze"],  # head alone for 1 epoch, then all (config.yaml: full)
        "no_ema": ["ema.enabled=false"],  # config.yaml: true
        "no_label_smoothing": ["head.label_smoothing=0.0"],  # task/classification.yaml: 0.1
        "res_up": [f"data.image_size={up}"],  # eval size follows
    }


def task_sets(task: str) -> tuple[list[str], list[str]]:
    """The dev sets of ``task``: ``(voting, held_out)`` in ``DEV_SETS`` order."""
    names = [n for n, spec in DEV_SETS.items() if spec["task"] == task]
    return [n for n in names if not DEV_SETS[n]["held_out"]], [n for n in names if DEV_SETS[n]["held_out"]]


def _names(value) -> list[str]:
    """Names as given on the command line: a list, or one string of comma-separated names
    (``--dev-arms no_ema,lp_ft``, ``--param sets=cls_emoji``)."""
    return value.split(",") if isinstance(value, str) else list(value)


def resolve_sets(p: dict, task: str) -> tuple[dict[str, Path], list[str]]:
    """``({set: folder}, held_out)``: ``p["sets"]`` (default: the task's voting sets) then ``p["held_out"]``
    (default: its held-out sets) under ``p["dev_root"]``; a missing folder is an error naming the fix."""
    voting, held = task_sets(task)
    voting, held = (_names(p.get(key, default)) for key, default in (("sets", voting), ("held_out", held)))
    root = Path(p["dev_root"])
    folders = {name: root / name for name in voting + held}
    layout = {"classification": ("train", "val"), "detection": ("annotations", "train", "val"),
              "segmentation": ("images", "masks")}[task]
    for name, folder in folders.items():
        missing = [sub for sub in layout if not (folder / sub).is_dir()]
        if missing:
            raise ValueError(
                f"--dev-root {root}: set {name!r} has no {', '.join(missing)} folder in {folder}; build it "
                f"with `{BUILD.replace('DIR', str(root))}` (or --which {name})"
            )
    return folders, held


def choose_arms(known: dict, p: dict) -> dict:
    """The arms of ``p["dev_arms"]`` (comma-separated), else the profile's (``p["arms"]``), else every arm
    ``known`` defines; the defaults always run: every verdict is against them."""
    wanted = _names(p.get("dev_arms") or p.get("arms") or list(known))
    unknown = [a for a in wanted if a not in known]
    if unknown:
        raise ValueError(f"--dev-arms: unknown arm(s) {unknown}; choose from {', '.join(known)}")
    return {a: known[a] for a in known if a == "defaults" or a in wanted}


def _library_extra(p: dict, overrides) -> list[str]:
    """A library arm's overrides: random init where no ``--weights`` are given (the smoke profile), the
    after-training steps off (:data:`POST_TRAINING_OFF`), then the arm's own."""
    return ([] if p.get("weights") else ["model.pretrained=false"]) + POST_TRAINING_OFF + list(overrides)


def _cls_plan(arm: str, overrides, data: Path, seed: int, p: dict, batch_size: int):
    """``(cache key, run)`` of one classification arm at one seed."""
    threads = p.get("threads", 1)
    common = {"weights": p.get("weights") or "null", "model_name": p["model"], "image_size": p["image_size"],
              "epochs": p["epochs"]}
    if overrides == NAIVE:
        if not p.get("weights"):
            raise ValueError("the naive arm needs --weights (the plain loop loads real weights)")
        key = naive_key(data, seed=seed, batch_size=batch_size, **common)
        return key, lambda: naive_run(data, seed=seed, batch_size=batch_size, threads=threads, **common)
    extra = _library_extra(p, overrides)
    key = "dev-cls-" + config_key(cli_overrides(data, seed=seed, extra=extra, **common))
    return key, lambda: library_run(data, threads=threads, seed=seed, extra=tuple(extra), **common)


def _log(name: str, arm: str, seed: int, run: dict, metric: str) -> None:
    wall = run.get("process_wall_s", run.get("wall_s"))
    reused = ", reused" if run.get("reused") else ""
    print(f"    {name} {arm} seed {seed}: {metric} {run['epochs'][-1][metric]:.4f} ({wall:.0f} s{reused})",
          flush=True)


def _measure_each(p: dict, folders: dict[str, Path], arms: dict, plan, metric: str) -> dict:
    """``{arm: {set: [runs]}}``, arm by arm over sets and seeds (``plan(arm, overrides, folder, seed)`` ->
    ``(cache key, run)``); missing runs left out (cached_only)."""
    cache = RunCache(p.get("cache"), read_only=bool(p.get("cached_only")))
    runs: dict[str, dict[str, list]] = {}
    for arm, overrides in arms.items():
        for name, data in folders.items():
            for seed in p["seeds"]:
                key, fn = plan(arm, overrides, data, seed)
                result, reused = cache.measure(key, fn, arm=arm, seed=seed, set=name)
                if result is not None:
                    runs.setdefault(arm, {}).setdefault(name, []).append(result | {"reused": reused})
                    _log(name, arm, seed, runs[arm][name][-1], metric)
    return runs


def measure_classification(p: dict, folders: dict[str, Path], arms: dict) -> dict:
    """``{arm: {set: [runs]}}``, arm by arm over sets and seeds; missing runs left out (cached_only)."""
    first = next(iter(folders.values()))
    weights = p.get("weights") or "null"
    batch_size = default_batch_size(cli_overrides(first, weights=weights, model_name=p["model"],
                                                  image_size=p["image_size"], epochs=p["epochs"], seed=0))
    return _measure_each(p, folders, arms, lambda *job: _cls_plan(*job, p, batch_size), "acc1")


def measure_detection(p: dict, folders: dict[str, Path], arms: dict) -> dict:
    """As :func:`measure_classification`, through the detection accuracy benchmark's runs; ``device=cuda``
    trains every arm on the GPU (library: ``trainer=gpu``; the plain loop: ``--device cuda``, fp32), and
    ``workers`` runs that many seeds of an arm side by side (one GPU holds several of these small runs)."""
    if not p.get("weights"):
        raise ValueError("dev_detection needs --weights (the plain loop loads real weights)")
    cache = RunCache(p.get("cache"), read_only=bool(p.get("cached_only")))
    runs: dict[str, dict[str, list]] = {}
    for arm, overrides in arms.items():
        for name, data in folders.items():
            settings = {"data": data, "weights": p["weights"], "model_name": p["model"],
                        "image_size": p["image_size"], "epochs": p["epochs"],
                        "device": p.get("device", "cpu")}
            extra = overrides if overrides == PLAIN else _library_extra(p, overrides)  # weights: required
            jobs = [(arm, extra, seed) for seed in p["seeds"]]
            done = measure_all(cache, jobs, settings, workers=p.get("workers", 1)).get(arm, [])
            if done:
                runs.setdefault(arm, {})[name] = done
            for seed, run in zip(p["seeds"], done):
                _log(name, arm, seed, run, "map_50")
    return runs


def _seg_plan(overrides, data: Path, seed: int, p: dict):
    """``(cache key, run)`` of one segmentation arm at one seed (the library's default decoder; ``smp``:
    ``smp.FPN``)."""
    from benchmarks import bench_segmentation_accuracy as seg

    threads = p.get("threads", 1)
    common = {"decoder": "fpn", "weights": p.get("weights") or "null", "model_name": p["model"],
              "image_size": p["image_size"], "epochs": p["epochs"], "seed": seed}
    if overrides == SMP:
        if not p.get("weights"):
            raise ValueError("the smp arm needs --weights (the SMP loop loads real weights)")
        return seg.plain_key(data, **common), lambda: seg.plain_run(data, threads=threads, **common)
    extra = tuple(_library_extra(p, overrides))
    key = "dev-seg-" + config_key(seg.cli_overrides(data, overrides=extra, **common))
    return key, lambda: seg.library_run(data, threads=threads, overrides=extra, **common)


def measure_segmentation(p: dict, folders: dict[str, Path], arms: dict) -> dict:
    """As :func:`measure_classification`, through the segmentation accuracy benchmark's runs."""
    return _measure_each(p, folders, arms, lambda _, *job: _seg_plan(*job, p), "miou")


def cells(runs: dict, metric: str) -> dict[str, dict[str, dict]]:
    """``{arm: {set: {"mean", "sd", "n", "wall_s"}}}`` of the final ``metric`` over seeds."""
    out: dict[str, dict[str, dict]] = {}
    for arm, per_set in runs.items():
        for name, rs in per_set.items():
            m, s = mean_sd([r["epochs"][-1][metric] for r in rs])
            wall = statistics.fmean(r.get("process_wall_s", r.get("wall_s", 0.0)) for r in rs)
            out.setdefault(arm, {})[name] = {"mean": round(m, 4), "sd": round(s, 4), "n": len(rs),
                                             "wall_s": round(wall, 1),
                                             "reused": sum(bool(r.get("reused")) for r in rs)}
    return out


def within_spread_of_best(table: dict, arm: str = "defaults") -> dict[str, bool]:
    """Per set: is ``arm`` the best, or within the seed spread (the larger sd) of the best?"""
    out = {}
    for name, cell in table.get(arm, {}).items():
        best = max((c[name] for c in table.values() if name in c), key=lambda c: c["mean"])
        out[name] = best["mean"] - cell["mean"] <= max(best["sd"], cell["sd"])
    return out


def _ratio(table: dict, arm: str, baseline: str, how: str) -> float | None:
    """Defaults / the plain loop: the smallest per-set ratio (``min``) or the ratio of the means over
    the sets (``mean``); ``None`` unless both arms have every set."""
    a, b = table.get(arm, {}), table.get(baseline, {})
    if not a or set(a) != set(b) or any(b[s]["mean"] <= 0 for s in b):
        return None
    if how == "min":
        return round(min(a[s]["mean"] / b[s]["mean"] for s in a), 4)
    return round(statistics.fmean(a[s]["mean"] for s in a) / statistics.fmean(b[s]["mean"] for s in b), 4)


def summarize_suite(task: str, runs: dict, held: list[str], seeds: list[int]) -> dict:
    """Per-metric tables and choices, and one verdict per arm (several metrics: :func:`combine`)."""
    baselines = set(BASELINES.values())
    tables = {metric: cells(runs, metric) for metric in METRICS[task]}
    choices = {metric: choose(table, held_out=held, simpler=SIMPLER, baselines=baselines)
               if "defaults" in table else None for metric, table in tables.items()}
    verdicts = {
        arm: combine([c["arms"][arm]["verdict"] for c in choices.values() if c], arm in SIMPLER)
        for arm in runs
    }
    first = tables[METRICS[task][0]]
    return {"per_set": tables, "choice": choices, "verdicts": verdicts, "held_out": held, "seeds": seeds,
            "sets": sorted({s for per_set in runs.values() for s in per_set},
                           key=lambda s: (s in held, list(DEV_SETS).index(s) if s in DEV_SETS else 0, s)),
            "defaults_within_spread_of_best": within_spread_of_best(first)}


def _skip(name: str, title: str, p: dict) -> Result | None:
    missing = [flag for flag, key in (("--dev-root DIR", "dev_root"), ("--weights FILE", "weights"))
               if not p.get(key) and not (key == "weights" and p.get("random_init"))]
    if missing:
        return Result(name=name, title=title, status="skipped",
                      reason=f"needs {' and '.join(missing)} (the sets: `{BUILD}`)")
    return None


def _side(table: dict, arm: str, unit: str) -> dict:
    """The mean over the sets of ``arm``'s per-set means; empty until it has every set the defaults have
    (a mean over fewer sets is not comparable with theirs)."""
    cells = table.get(arm, {})
    if not cells or set(cells) != set(table.get("defaults", cells)):
        return {}
    values = [cell["mean"] for cell in cells.values()]
    return {"median": round(statistics.fmean(values), 4), "unit": unit, "samples": values}


def run_task(task: str, name: str, p: dict) -> Result:
    """``p``: dev_root, weights, model, image_size, epochs, seeds, arms (``dev_arms`` narrows them), sets /
    held_out (defaults: ``DEV_SETS``), cache, cached_only, threads, random_init (smoke: no weights)."""
    budget = f"{p['model']} @ {p['image_size']}, {p['epochs']} epochs, seeds {list(p['seeds'])}"
    title = f"Dev benchmark, {task} ({budget}): defaults vs a plain loop and the alternatives, per set"
    skipped = _skip(name, title, p)
    if skipped:
        return skipped
    folders, held = resolve_sets(p, task)
    known, measure = {"classification": (cls_arms, measure_classification),
                      "detection": (det_arms, measure_detection),
                      "segmentation": (seg_arms, measure_segmentation)}[task]
    arms = choose_arms(known(p["image_size"]), p)
    runs, baseline = measure(p, folders, arms), BASELINES[task]
    suite = summarize_suite(task, runs, held, list(p["seeds"]))
    metric = METRICS[task][0]
    table = suite["per_set"][metric]
    how, target, ratio_kind = RATIOS[task]
    return Result(
        name=name,
        title=title,
        settings={k: p[k] for k in ("model", "image_size", "epochs", "seeds")}
        | {"dev_root": str(p["dev_root"]), "sets": list(folders), "held_out": held,
           "arms": {a: o if isinstance(o, str) else " ".join(o) or "(none)" for a, o in arms.items()}},
        library=_side(table, "defaults", f"{metric} (defaults, mean over seeds, per set)"),
        baseline=_side(table, baseline, f"{metric} ({baseline} loop)"),
        ratio=_ratio(table, "defaults", baseline, how),
        ratio_kind=ratio_kind,
        target=target,
        extra={"dev_suite": suite},
    ).check()

