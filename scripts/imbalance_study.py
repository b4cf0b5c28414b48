"""Minority-class recall on a generated 10:1 set: plain vs loss.class_weights=auto vs data.sampler=balanced.

Two classes of noisy colour patches whose mean colours overlap (each image's colour is its class colour
plus a per-image offset, so the decision boundary and the class prior matter): 200
"major" and 20 "minor" training images, a balanced validation split (40 + 40). The same budget for
every variant (tiny random-init backbone, 3 epochs); the minority and majority recalls (val/acc_minor,
val/acc_major) as mean ± sd over seeds.

    OMP_NUM_THREADS=1 python scripts/imbalance_study.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from b4transfer.cli.entry import config_dir
from b4transfer.modes import train

VARIANTS = {"plain": [], "class_weights=auto": ["loss.class_weights=auto"],
            "sampler=balanced": ["data.sampler=balanced"]}
COLOURS = {"major": (140, 120, 110), "minor": (115, 135, 130)}


def make_set(root: Path, counts: dict[str, dict[str, int]], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for name, n in per_class.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = np.array(COLOURS[name]) + rng.normal(0, 25, size=3)  # classes overlap
                noise = rng.normal(0, 30, size=(32, 32, 3))
                arr = np.clip(colour[None, None] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{i:03d}.png")
    return root


def run(root: Path, out: Path, seed: int, extra: list[str]) -> dict[str, float]:
    overrides = ["model=test_efficientnet", "model.pretrained=false", "trainer.accelerator=cpu",
                 "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "data=folder",
                 f"data.root={root}", "data.num_workers=0", "data.batch_size=16", "data.image_size=32",
                 "data.augment=false", "ema.enabled=false", "logger=none", f"seed={seed}", f"run_dir={out}",
                 *extra]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    metrics = train(cfg)["metrics"]
    return {k: round(float(metrics[f"val/acc_{k}"]), 4) for k in ("minor", "major")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_set(Path(tmp) / "data", {"train": {"major": 200, "minor": 20},
                                             "val": {"major": 40, "minor": 40}})
        results = {
            name: [run(root, Path(tmp) / f"{i}-{seed}", seed, extra) for seed in args.seeds]
            for i, (name, extra) in enumerate(VARIANTS.items())
        }
    for name, runs in results.items():
        cells = []
        for k in ("minor", "major"):
            recalls = [r[k] for r in runs]
            spread = statistics.stdev(recalls) if len(recalls) > 1 else 0.0
            cells.append(f"{k} recall {statistics.mean(recalls):.3f} ± {spread:.3f}")
        print(f"{name:20s} " + "  ".join(cells) + f"  per seed: {runs}")
    if args.json:
        args.json.write_text(json.dumps({"seeds": args.seeds, "recall": results}, indent=2))


if __name__ == "__main__":
    main()
