"""Detection recipe study on real images and real weights: which settings matter, over seeds.

Each variant is a list of config overrides on top of ``task=detection data=coco`` (the library's
detection defaults); ``plain`` is the written-out torchvision loop of ``benchmarks/plain_detection.py``.
Results are appended to a JSON file as each run ends (a re-run skips what is there), and a Markdown
table (mean ± sd over seeds of the final mAP@50 / mAP, per seed, mAP@50 per epoch, seconds per run) is
printed and written next to it.

    python scripts/build_real_sets.py --out /data/real --which detection
    python scripts/detection_study.py --data /data/real/real_det \
        --weights tf_efficientnet_lite1_timm.safetensors --seeds 0 1 2 --variants defaults plain ...

The variants run by default are the ones the README's detection table reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_detection_accuracy import PLAIN_RECIPE_OVERRIDES, library_run, summarize  # noqa: E402

PR = PLAIN_RECIPE_OVERRIDES


def _without(overrides, *prefixes):
    return tuple(o for o in overrides if not o.startswith(prefixes))


# The defaults before this study (pinned, so that the row keeps its meaning after defaults change).
OLD = (
    "finetune.bn=train",
    "optim.backbone_lr_mult=1.0",
    "optim.weight_decay=0.05",
    "scheduler=none",
    "data.batch_size=8",
    "head.fpn_channels=256",
    "ema.enabled=true",
    "data.augment.scale=[0.75,1.25]",
    "data.augment.color_jitter=0.2",
    "trainer.gradient_clip_val=null",
)

VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "plain": ("<plain loop>",),
    "old_defaults": OLD,
    "plain_recipe": PR,
    # the collapse: the plain recipe with the old jitter, weight decay 0.05 and no clipping
    "plain_recipe+jitter+wd0.05-clip": _without(PR, "data.augment", "optim.weight_decay", "trainer.gradient")
    + ("optim.weight_decay=0.05", "trainer.gradient_clip_val=null"),
    # one factor at a time, from the plain recipe
    "plain_recipe-clip": _without(PR, "trainer.gradient") + ("trainer.gradient_clip_val=null",),
    "plain_recipe+wd0.05": _without(PR, "optim.weight_decay") + ("optim.weight_decay=0.05",),
    "plain_recipe+jitter": _without(PR, "data.augment"),
    "plain_recipe+bn_train": _without(PR, "finetune.bn") + ("finetune.bn=train",),
    "plain_recipe+backbone_lr1": _without(PR, "optim.backbone_lr_mult") + ("optim.backbone_lr_mult=1.0",),
    "plain_recipe+batch8": _without(PR, "data.batch_size") + ("data.batch_size=8",),
    "plain_recipe+fpn256": _without(PR, "head.fpn_channels") + ("head.fpn_channels=256",),
    "plain_recipe+ema": _without(PR, "ema.enabled") + ("ema.enabled=true",),
    "plain_recipe+constant_lr": _without(PR, "scheduler") + ("scheduler=none",),
    # one factor at a time, from the old defaults
    "old+clip10": _without(OLD, "trainer.gradient") + ("trainer.gradient_clip_val=10",),
    "old+bn_frozen": _without(OLD, "finetune.bn") + ("finetune.bn=frozen",),
    "old+backbone_lr0.1": _without(OLD, "optim.backbone_lr_mult") + ("optim.backbone_lr_mult=0.1",),
    "old+no_jitter": _without(OLD, "data.augment")
    + ("data.augment.scale=[1.0,1.0]", "data.augment.color_jitter=0"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="COCO-format real-image set (annotations/, train/, val/)")
    ap.add_argument("--weights", required=True, help="timm-layout ImageNet weights for --model")
    ap.add_argument("--model", default="tf_efficientnet_lite1")
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: no OpenMP contention)")
    ap.add_argument("--extra", nargs="*", default=[], help="NAME=override,override: ad-hoc variants")
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("detection_study.results.json"))
    args = ap.parse_args(argv)
    variants = dict(VARIANTS)
    for spec in args.extra:
        name, _, overrides = spec.partition("=")
        variants[name] = tuple(o for o in overrides.split(",") if o)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    setting = f"{args.model}@{args.image_size}x{args.epochs}ep"
    store = results.setdefault(setting, {})
    for name in args.variants:
        for seed in args.seeds:
            key = f"{name}/seed{seed}"
            if key in store:
                continue
            print(f"[{setting}] {key} ...", flush=True)
            store[key] = run_variant(variants[name], args, seed) | {"overrides": list(variants[name])}
            args.results.write_text(json.dumps(results, indent=1) + "\n")
            print(
                f"    mAP@50 per epoch {[e['map_50'] for e in store[key]['epochs']]} "
                f"({store[key]['wall_s']} s)",
                flush=True,
            )
    table = render(store, args.variants, args.seeds, setting)
    print(table)
    args.results.with_suffix(".md").write_text(table)
    return 0


def run_variant(overrides: tuple[str, ...], args, seed: int) -> dict:
    common = dict(
        weights=args.weights, model_name=args.model, image_size=args.image_size, epochs=args.epochs, seed=seed
    )
    if overrides == ("<plain loop>",):
        import torch
        from benchmarks.plain_detection import train_plain

        torch.set_num_threads(args.threads)
        return train_plain(args.data, **common)
    return library_run(args.data, overrides=overrides, threads=args.threads, **common)


def render(store: dict, names, seeds, setting: str) -> str:
    lines = [
        f"Setting: {setting}",
        "",
        "| variant | mAP@50 (mean ± sd) | mAP (mean ± sd) | mAP@50 per seed | mAP@50 per epoch (mean) "
        "| s / run |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        runs = [store[f"{name}/seed{s}"] for s in seeds if f"{name}/seed{s}" in store]
        if not runs:
            continue
        s = summarize(runs)
        lines.append(
            f"| {name} | {s['map_50']:.3f} ± {s['map_50_sd']:.3f} | {s['map']:.3f} ± {s['map_sd']:.3f} | "
            f"{' / '.join(f'{v:.3f}' for v in s['per_seed_map_50'])} | "
            f"{' → '.join(format(e['map_50'], '.3f') for e in s['per_epoch'])} | {s['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
