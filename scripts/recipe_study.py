"""Fine-tuning recipe study on real ImageNet weights and real images, over seeds.

    python scripts/recipe_study.py --data /work/data/real_cls \
        --weights ../shared/weights/tf_efficientnet_lite1_timm.safetensors \
        [--image-size 160] [--epochs 5] [--seeds 0 1 2] [--arms defaults "no EMA"] [--report-only] \
        [--base optim.layer_decay=null]

Every arm is the library's defaults (``python run.py data=folder``, nothing overridden but data, model,
weights, image size, epochs and seed) plus one knob; the first arm is the defaults themselves. ``--base``
adds overrides under every arm (an arm's own value of a key wins): ``--base optim.layer_decay=null`` is the
defaults before this study chose layer-wise LR decay, the base of the one-knob table in
docs/studies/classification-recipe.md. Each run is
a ``run.py`` subprocess with one OpenMP thread, final ``val/acc1`` after the last epoch and its wall
seconds (process start to the last epoch's end, the library's ``time/elapsed_s``). Runs go seed by seed
(all arms at seed 0, then seed 1, ...) so an interrupted study still has whole seeds.

Finished runs are kept in ``--cache`` (JSON, keyed by the composed config, the same cache as the accuracy
benchmarks) and reused. Several processes can share one cache: a run is claimed with a file under
``<cache>.claims/`` before it starts, so two workers (one per core) never train the same run.

Prints a markdown table (mean ± sd over seeds, per seed, difference to the defaults, wall seconds, train
images/s) and writes it with every run to ``--out`` (JSON). Replaces ``scripts/compare_schedules.py``'s
generated-demo table: these are real weights (``scripts/convert_lite_weights.py``) on real images
(``scripts/build_real_sets.py --which classification``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from benchmarks.bench_detection_accuracy import RunCache, config_key  # noqa: E402
from benchmarks.bench_time_to_accuracy import cli_overrides, library_run  # noqa: E402

# One knob at a time on the library's defaults (adamw 1e-3 for the head, layer-wise LR decay 0.75 down the
# backbone, constant LR, EMA 0.999 with warm-up, label smoothing 0.1, BatchNorm training, timm's
# RandomResizedCrop(0.08-1) + flip + jitter 0.4, precision=auto, evaluation at the model's test/train size
# ratio).
ARMS: dict[str, list[str]] = {
    "defaults": [],
    "one backbone LR (optim.layer_decay=null: the defaults before this study)": ["optim.layer_decay=null"],
    "fp32 (precision=32-true)": ["precision=32-true"],
    "LP-FT (finetune=freeze_unfreeze: 1 epoch head only, then all, 1-epoch warm-up)": [
        "finetune=freeze_unfreeze"
    ],
    "backbone LR x0.1 (head LR x10 relative)": ["optim.backbone_lr_mult=0.1"],
    "layer-wise LR decay 0.75": ["optim.layer_decay=0.75"],
    "warm-up 1 epoch + cosine": ["scheduler=cosine"],
    "no label smoothing": ["head.label_smoothing=0.0"],
    "no EMA": ["ema.enabled=false"],
    "frozen BN statistics": ["finetune.bn=frozen"],
    "light augmentation (crop scale 0.35-1, no colour jitter)": [
        "data.augment.scale=[0.35,1.0]",
        "data.augment.color_jitter=0.0",
    ],
    # lite1 has no test size of its own, so by default it evaluates at the train size; B4 tests at 1.2x
    "evaluation at 1.2x the train size (B4's test/train ratio)": ["data.eval_image_size={eval_1_2}"],
}


def claim(claims: Path, key: str) -> bool:
    """Take ``key`` for this process (``False``: another process has it)."""
    claims.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(claims / key, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def jobs(args) -> list[tuple[str, int, str, list[str]]]:
    """``(arm, seed, key, overrides)`` in run order: seed by seed, arms in table order."""
    common = dict(weights=args.weights, model_name=args.model, image_size=args.image_size, epochs=args.epochs)
    out = []
    for seed in args.seeds:
        for arm in args.arms:
            own = [o.format(eval_1_2=round(1.2 * args.image_size)) for o in ARMS[arm]]
            mine = {o.split("=", 1)[0] for o in own}
            extra = tuple([o for o in args.base if o.split("=", 1)[0] not in mine] + own)
            key = "tta-" + config_key(cli_overrides(args.data, seed=seed, extra=extra, **common))
            out.append((arm, seed, key, list(extra)))
    return out


def run_all(args) -> None:
    common = dict(weights=args.weights, model_name=args.model, image_size=args.image_size, epochs=args.epochs)
    claims = Path(str(args.cache) + ".claims")
    for arm, seed, key, extra in jobs(args):
        if key in RunCache(args.cache).runs or not claim(claims, key):
            continue
        print(f"{arm} / seed {seed} ...", flush=True)
        result, _ = RunCache(args.cache).measure(
            key,
            lambda s=seed, e=tuple(extra): library_run(
                args.data, threads=args.threads, seed=s, extra=e, **common
            ),
            arm=arm,
            seed=seed,
            overrides=extra,
        )
        print(f"  val/acc1 {result['epochs'][-1]['acc1']:.4f}, {result['wall_s']:.0f} s", flush=True)


def report(args) -> dict:
    cache = RunCache(args.cache).runs
    planned = jobs(args)  # composes every run's config once, not once per arm
    rows, base = [], None
    for arm in args.arms:
        runs = [(seed, cache[key]) for a, seed, key, _ in planned if a == arm and key in cache]
        if not runs:
            continue
        accs = [r["epochs"][-1]["acc1"] * 100 for _, r in runs]
        row = {
            "arm": arm,
            "overrides": ARMS[arm],
            "seeds": [s for s, _ in runs],
            "acc1": statistics.fmean(accs),
            "acc1_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "per_seed": accs,
            "wall_s": statistics.fmean(r["wall_s"] for _, r in runs),
            "train_images_per_s": statistics.fmean(r["train_images_per_s"] or 0 for _, r in runs),
        }
        base = base or row
        # paired by seed: the same data order and head init per seed in every arm
        by_seed = dict(zip(base["seeds"], base["per_seed"]))
        same = [a - by_seed[s] for (s, _), a in zip(runs, accs) if s in by_seed]
        row["delta"] = statistics.fmean(same) if same else None
        rows.append(row)
    lines = [
        f"| recipe ({args.model} @ {args.image_size} px, {args.epochs} epochs"
        f"{', every arm + ' + ' '.join(args.base) if args.base else ''}) | val acc1 % (mean ± sd) "
        "| per seed | vs defaults (paired) | s / run | train img/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "-" if r is rows[0] else f"{r['delta']:+.1f}"
        lines.append(
            f"| {r['arm']} | {r['acc1']:.1f} ± {r['acc1_sd']:.1f} | "
            f"{' / '.join(f'{a:.1f}' for a in r['per_seed'])} | {delta} | {r['wall_s']:.0f} | "
            f"{r['train_images_per_s']:.1f} |"
        )
    return {"rows": rows, "table": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="train/<class>/, val/<class>/ folders")
    parser.add_argument("--weights", required=True, help="timm-layout ImageNet weights (safetensors)")
    parser.add_argument("--model", default="tf_efficientnet_lite1")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM")
    parser.add_argument(
        "--base", nargs="*", default=[], help="overrides under every arm, e.g. optim.layer_decay=null"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "results" / "runs" / "acc.json")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "recipe_study.results.json")
    parser.add_argument("--report-only", action="store_true", help="tabulate the cached runs, train none")
    args = parser.parse_args()
    if not (args.data / "train").is_dir() or not (args.data / "val").is_dir():
        parser.error(f"--data {args.data} needs train/<class>/ and val/<class>/ folders")
    if not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights}: no such file")
    if not args.report_only:
        run_all(args)
    result = report(args)
    print("\n" + result["table"])
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "report_only"}
    args.out.write_text(json.dumps({"settings": settings, **result}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
