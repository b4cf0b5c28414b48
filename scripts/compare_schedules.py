"""Compare the freezing schedules (and a few defaults) from the same pretrained-like start, on CPU.

    PYTHONPATH=src python scripts/compare_schedules.py [--seeds 0 1 2] [--epochs 10] [--quick]

1. Source task: a demo set with a different seed and only half of the classes (circle, square,
   triangle). An ``efficientnet_b0`` is trained on it from random init; its weights are the
   "pretrained" backbone (no hub weights are needed; B4 itself is too slow for this on a CPU).
2. Target task: the 6-class demo set (seed 0) with few images per class, as a small custom data set.
   Each variant fine-tunes from the same weights (``model.weights=``) over several seeds; the final
   ``val/acc1`` is reported as mean +- standard deviation over seeds, with the wall time.
3. The four schedules from a pinned baseline (adamw, one LR of 1e-3 for all groups, cosine, ``bn=train``,
   no EMA: the defaults before this measurement), then one knob at a time on the best of them: constant
   LR, EMA, frozen BN statistics, and constant LR + EMA.

Writes ``<work-dir>/results.json`` and prints a markdown table (the README's table comes from it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from b4transfer.cli import config_dir  # noqa: E402
from b4transfer.data.demo import DEMO_CLASSES, ensure_demo  # noqa: E402
from b4transfer.modes import train  # noqa: E402

SOURCE_CLASSES = DEMO_CLASSES[:3]
SCHEDULES = {
    "linear_probe": ["finetune=linear_probe"],
    "freeze_unfreeze": ["finetune=freeze_unfreeze"],
    "gradual": ["finetune=gradual"],
    "full": ["finetune=full"],
}
# The baseline every variant starts from, pinned so that later changes of the config defaults (which
# these numbers chose) leave the measurement as it was: adamw, one LR of 1e-3 for all groups, cosine
# with a 1-epoch warm-up, BatchNorm training in trainable stages, no EMA.
BASELINE = [
    "optim=adamw",
    "optim.lr=1e-3",
    "optim.backbone_lr_mult=1.0",
    "scheduler=cosine",
    "ema.enabled=false",
    "finetune.bn=train",
]
# Then one knob at a time on the best schedule.
KNOBS = {
    "constant LR": ["scheduler=none"],
    "EMA": ["ema.enabled=true"],
    "frozen BN statistics": ["finetune.bn=frozen"],
    "constant LR + EMA": ["scheduler=none", "ema.enabled=true"],
}


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run(name: str, overrides: list[str], run_dir: Path) -> dict:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    summary = train(compose_cfg([*overrides, f"run_dir={run_dir}"]))
    acc = summary["metrics"]["val/acc1"]
    print(f"  {name}: val/acc1={acc:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"val_acc1": acc, "best": summary["best_score"], "wall_s": summary["wall_time_s"]}


def make_source(work: Path, size: int, per_class: int) -> Path:
    """The source task: seed-1 demo images of the first three classes only."""
    full = ensure_demo(
        work / "source-all", image_size=size, train_per_class=per_class, val_per_class=20, seed=1
    )
    source = work / "source"
    if not source.exists():
        for split in ("train", "val"):
            for name in SOURCE_CLASSES:
                shutil.copytree(full / split / name, source / split / name)
    return source


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/b4transfer-compare"))
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--train-per-class", type=int, default=20, help="target training images per class")
    parser.add_argument("--no-knobs", action="store_true", help="schedules only, no default-knob variants")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs, tiny pretraining")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is several times faster on a busy machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.epochs, args.pretrain_epochs = args.seeds[:1], 2, 2
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = [
        "data=folder",
        f"data.image_size={args.image_size}",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        f"model.name={args.model}",
        "model.pretrained=false",
    ]
    started = time.perf_counter()

    weights = work / f"pretrained-{args.model}-{args.image_size}-{args.pretrain_epochs}.safetensors"
    pretrain = None
    if not weights.is_file():
        source = make_source(work, args.image_size, per_class=100)
        print(f"Pretraining {args.model} on {len(SOURCE_CLASSES)} source classes ({source})", flush=True)
        pretrain = run(
            "pretrain",
            [
                *common,
                f"data.root={source}",
                "finetune=full",
                "optim.lr=2e-3",
                "seed=100",
                f"trainer.max_epochs={args.pretrain_epochs}",
            ],
            work / "pretrain",
        )
        shutil.copy(work / "pretrain" / "export" / "model.safetensors", weights)
        weights.with_suffix(".json").write_text(json.dumps(pretrain) + "\n")
    elif weights.with_suffix(".json").is_file():
        pretrain = json.loads(weights.with_suffix(".json").read_text())
    target = ensure_demo(
        work / f"target-{args.train_per_class}",
        image_size=args.image_size,
        train_per_class=args.train_per_class,
        val_per_class=20,
        seed=0,
    )
    fine = [
        *common,
        *BASELINE,
        f"data.root={target}",
        f"model.weights={weights}",
        f"trainer.max_epochs={args.epochs}",
    ]
    results: dict[str, list[dict]] = {}

    def measure(name: str, overrides: list[str]) -> None:
        print(name, flush=True)
        slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
        results[name] = [
            run(f"seed {seed}", [*fine, *overrides, f"seed={seed}"], work / "runs" / f"{slug}-s{seed}")
            for seed in args.seeds
        ]

    for name, overrides in SCHEDULES.items():
        measure(name, overrides)
    best = max(SCHEDULES, key=lambda name: statistics.mean(r["val_acc1"] for r in results[name]))
    if not args.no_knobs:
        for name, overrides in KNOBS.items():
            measure(f"{best} + {name}", [*SCHEDULES[best], *overrides])
    table = _table(results, args)
    print("\n" + table)
    out = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "pretrain": pretrain,
        "results": results,
        "total_wall_s": round(time.perf_counter() - started, 1),
        "best_schedule": best,
        "table": table,
    }
    (work / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {work / 'results.json'} ({out['total_wall_s']:.0f} s in all)")


def _table(results: dict[str, list[dict]], args) -> str:
    lines = [
        f"| variant | val/acc1 (mean ± sd over {len(args.seeds)} seeds) | per seed | s / run |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        accs = [r["val_acc1"] * 100 for r in runs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        per_seed = " / ".join(f"{a:.1f}" for a in accs)
        wall = statistics.mean(r["wall_s"] for r in runs)
        lines.append(f"| {name} | {statistics.mean(accs):.1f} ± {sd:.1f} | {per_seed} | {wall:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
