"""Classification TTA measured: the demo set, one model per seed, validated without and with TTA.

Trains ``--model`` from random init on the generated classification demo (6 classes of shapes) with
``seeds=[...]`` (the library's seed spread: one run per seed), then validates each run's best checkpoint
with ``tta=hflip`` and ``tta=hflip_scales``; prints ``val/acc1`` without / with each, mean ± sd over seeds.

    OMP_NUM_THREADS=1 python scripts/tta_study.py --json scripts/tta_study.results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from b4transfer.cli.entry import config_dir
from b4transfer.modes import run


def cfg(*overrides: str):
    base = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=none",
            "data.num_workers=0", "model.pretrained=false"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=[*base, *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tta-study-"))
    common = [f"model.name={args.model}", f"data.image_size={args.image_size}"]
    seeds = ",".join(str(s) for s in args.seeds)
    trained = run(cfg(*common, f"trainer.max_epochs={args.epochs}", f"seeds=[{seeds}]",
                      f"run_dir={work / 'train'}"))
    acc: dict[str, list[float]] = {"without": [], "hflip": [], "hflip_scales": []}
    for r in trained["runs"]:
        for name in ("hflip", "hflip_scales"):
            run_dir = work / f"seed{r['seed']}-{name}"
            out = run(cfg(*common, "mode=validate", f"ckpt_path={r['best_checkpoint']}", f"tta={name}",
                          f"run_dir={run_dir}"))
            acc[name].append(out["tta"]["with_tta"])
        acc["without"].append(out["tta"]["without_tta"])
    table = {k: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "per_seed": v}
             for k, v in acc.items()}
    results = {"model": args.model, "image_size": args.image_size, "epochs": args.epochs, "seeds": args.seeds,
               "val/acc1": table}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
