"""Detection recipe study on real images and real weights: which settings matter, over seeds.

Each variant is a list of config overrides on top of ``task=detection data=coco`` (the library's
detection defaults); ``plain`` is the written-out torchvision loop of ``benchmarks/plain_detection.py``.
Finished runs go to a JSON cache shared with the accuracy-parity benchmark
(``benchmarks/bench_detection_accuracy.py``), keyed by each run's fully composed config: a re-run skips
what is there, whichever of the two measured it. A Markdown table (mean ± sd over seeds of the final
mAP@50 / mAP, per seed, mAP@50 per epoch, seconds per run) is printed and written to ``--table``.

    python scripts/build_real_sets.py --out /data/real --which detection
    python scripts/detection_study.py --data /data/real/real_det \
        --weights tf_efficientnet_lite1_timm.safetensors --seeds 0 1 2 --variants defaults plain ...

The variants run by default are the ones the detection table of docs/studies/detection-recipe.md reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_detection_accuracy import (  # noqa: E402
    PLAIN_RECIPE_OVERRIDES,
    RunCache,
    measure_all,
    summarize,
)

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

# What head.anchor_sizes=auto picks on the real-image set at 256 px (17 % of the training boxes are
# smaller than the default anchors cover); written out so the row keeps its meaning.
FITTED_256 = "head.anchor_sizes=[[22,28,35],[44,55,70],[89,111,140],[177,223,281],[354,446,562]]"

JITTER = ("data.augment.scale=[0.75,1.25]", "data.augment.color_jitter=0.2")  # the old defaults' jitter

VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "plain": "plain",
    "old_defaults": OLD,
    "plain_recipe": PR,
    # the collapse: the plain recipe with the old jitter, weight decay 0.05 and no clipping
    "plain_recipe+jitter+wd0.05-clip": _without(PR, "data.augment", "optim.weight_decay", "trainer.gradient")
    + JITTER + ("optim.weight_decay=0.05", "trainer.gradient_clip_val=null"),
    # one factor at a time, from the plain recipe
    "plain_recipe-clip": _without(PR, "trainer.gradient") + ("trainer.gradient_clip_val=null",),
    "plain_recipe+anchors_fit": _without(PR, "head.anchor_sizes") + (FITTED_256,),
    "plain_recipe+v2_head": _without(PR, "head.head_norm", "head.box_loss")
    + ("head.head_norm=group", "head.box_loss=giou"),
    "plain_recipe+wd0.05": _without(PR, "optim.weight_decay") + ("optim.weight_decay=0.05",),
    "plain_recipe+jitter": _without(PR, "data.augment") + JITTER,
    "plain_recipe+bn_train": _without(PR, "finetune.bn") + ("finetune.bn=train",),
    "plain_recipe+backbone_lr1": _without(PR, "optim.backbone_lr_mult") + ("optim.backbone_lr_mult=1.0",),
    "plain_recipe+batch8": _without(PR, "data.batch_size") + ("data.batch_size=8",),
    "plain_recipe+fpn256": _without(PR, "head.fpn_channels") + ("head.fpn_channels=256",),
    "plain_recipe+ema": _without(PR, "ema.enabled") + ("ema.enabled=true",),
    "plain_recipe+constant_lr": _without(PR, "scheduler") + ("scheduler=none",),
    "plain_recipe+fcos": PR + ("head.detector=fcos",),
    "plain_recipe+faster_rcnn": PR + ("head.detector=faster_rcnn",),
    # one factor at a time, from the defaults (anchors fitted to the boxes, batch 2)
    "defaults+batch4": ("data.batch_size=4",),
    "defaults+torchvision_anchors": ("head.anchor_sizes=null",),
    "defaults+jitter": JITTER,
    "defaults+wd0.05": ("optim.weight_decay=0.05",),
    "defaults+bn_train": ("finetune.bn=train",),
    "defaults+backbone_lr1": ("optim.backbone_lr_mult=1.0",),
    "defaults+backbone_lr0.3": ("optim.backbone_lr_mult=0.3",),
    "defaults+fpn256": ("head.fpn_channels=256",),
    "defaults+ema": ("ema.enabled=true",),
    "defaults+constant_lr": ("scheduler=none",),
    "defaults+no_warmup": ("scheduler.warmup_epochs=0",),
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
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--workers", type=int, default=1, help="runs side by side (one torch thread each)")
    ap.add_argument("--extra", nargs="*", default=[], help="NAME=override,override: ad-hoc variants")
    ap.add_argument("--cache", type=Path, default=Path("detection_runs.json"), help="finished runs (JSON)")
    ap.add_argument("--table", type=Path, default=None, help="also write the Markdown table here")
    ap.add_argument("--no-run", action="store_true", help="only tabulate the runs already in --cache")
    args = ap.parse_args(argv)
    variants = dict(VARIANTS)
    for spec in args.extra:
        name, _, overrides = spec.partition("=")
        variants[name] = tuple(o for o in overrides.split(",") if o)
    settings = {
        "data": args.data,
        "weights": args.weights,
        "model_name": args.model,
        "image_size": args.image_size,
        "epochs": args.epochs,
    }
    jobs = [(name, variants[name], seed) for name in args.variants for seed in args.seeds]
    runs = measure_all(RunCache(args.cache, read_only=args.no_run), jobs, settings, workers=args.workers)
    table = render(runs, args.variants, f"{args.model}@{args.image_size}, {args.epochs} epochs")
    print(table)
    if args.table:
        args.table.write_text(table)
    return 0


def render(runs: dict[str, list[dict]], names, setting: str) -> str:
    lines = [
        f"Setting: {setting}",
        "",
        "| variant | seeds | mAP@50 (mean ± sd) | mAP (mean ± sd) | mAP@50 per seed "
        "| mAP@50 per epoch (mean) | s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        if not runs.get(name):
            continue
        s = summarize(runs[name])
        lines.append(
            f"| {name} | {len(runs[name])} | {s['map_50']:.3f} ± {s['map_50_sd']:.3f} "
            f"| {s['map']:.3f} ± {s['map_sd']:.3f} | "
            f"{' / '.join(f'{v:.3f}' for v in s['per_seed_map_50'])} | "
            f"{' → '.join(format(e['map_50'], '.3f') for e in s['per_epoch'])} | {s['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
