"""Which class activation map, on which backbone stage: the measurement behind ``predict.explain_method`` and
``predict.explain_stride`` (docs/guides/distillation.md#explanations).

Per seed, ``test_efficientnet`` (random init) is trained for a few epochs on generated 128 px images: grey
noise, a blue square anywhere (a distractor in both classes) and, for class 1 only, a red square in the
top-left quadrant. On held-out class-1 images it reports, for each method and stride, the share of maps
whose peak (upsampled to the image) falls on the red square (+- 1/10 of the side), and the mean share of
the map's mass in the top-left quadrant::

    OMP_NUM_THREADS=1 python scripts/cam_study.py --seeds 0 1 2 --epochs 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from b4transfer.explain import METHODS
from b4transfer.tasks.classification.explain import class_maps
from b4transfer.tasks.classification.module import ClassificationModule

SIZE, SIDE = 128, 25
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def images(n: int, rng: np.random.Generator):
    xs, ys, corners = [], [], []
    for i in range(n):
        img = rng.normal(0.45, 0.12, size=(SIZE, SIZE, 3))
        bx, by = rng.integers(0, SIZE - SIDE, 2)
        img[by : by + SIDE, bx : bx + SIDE] = (0.15, 0.2, 0.85)
        corner = None
        if i % 2:
            x0, y0 = rng.integers(0, SIZE // 2 - SIDE, 2)
            img[y0 : y0 + SIDE, x0 : x0 + SIDE] = (0.9, 0.1, 0.1)
            corner = (int(x0), int(y0))
        xs.append(torch.tensor(img.clip(0, 1), dtype=torch.float32).permute(2, 0, 1))
        ys.append(i % 2)
        corners.append(corner)
    return (torch.stack(xs) - MEAN[:, None, None]) / STD[:, None, None], torch.tensor(ys), corners


def scores(module, x, corners, method: str, stride: int) -> tuple[float, float]:
    maps, _, _ = class_maps(module, x, torch.ones(len(x), dtype=torch.long), method=method, stride=stride)
    up = F.interpolate(maps[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    hits, mass, margin = [], [], SIZE // 10
    for heat, (x0, y0) in zip(up, corners):
        row, col = divmod(int(heat.argmax()), SIZE)
        hits.append(y0 - margin <= row < y0 + SIDE + margin and x0 - margin <= col < x0 + SIDE + margin)
        mass.append(float(heat[: SIZE // 2, : SIZE // 2].sum() / heat.sum().clamp(min=1e-7)))
    return float(np.mean(hits)), float(np.mean(mass))


def study(seed: int, epochs: int, train_images: int) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x, y, _ = images(train_images, rng)
    test_x, test_y, corners = images(64, rng)
    test_x, corners = test_x[test_y == 1], [c for c in corners if c is not None]
    data = {"image_size": SIZE, "eval_image_size": SIZE, "crop_pct": 1.0, "eval_crop_pct": 1.0}
    model = {"name": "test_efficientnet"}
    module = ClassificationModule(class_names=["none", "square"], model=model, data=data)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    for _ in range(epochs):
        module.train()
        for batch in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(module(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {(m, s): scores(module, test_x, corners, m, s) for s in (8, 16, 32) for m in METHODS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=256)
    args = parser.parse_args()
    results = {seed: study(seed, args.epochs, args.train_images) for seed in args.seeds}
    print("| stride | method | peak on the square (per seed) | mass in the quadrant (per seed) |")
    print("|---|---|---|---|")
    for key in results[args.seeds[0]]:
        hits = " / ".join(f"{results[s][key][0]:.2f}" for s in args.seeds)
        mass = " / ".join(f"{results[s][key][1]:.2f}" for s in args.seeds)
        print(f"| {key[1]} | {key[0]} | {hits} | {mass} |")


if __name__ == "__main__":
    main()
