"""Sanity check of converted ImageNet weights: top-5 labels on real photos that ship offline.

Loads ``tf_efficientnet_lite1`` with the given safetensors file (see /work/shared/weights/README.md),
applies timm's eval transform for the model and prints the top-5 ImageNet-1k classes for the photos
bundled with scikit-image (``pip install scikit-image``; no download): chelsea (a tabby cat), coffee
(an espresso cup), rocket (a launch), astronaut, camera (a man with a camera on a tripod, grey) and the
left view of the stereo motorcycle pair. Sensible output: chelsea -> Egyptian cat / tabby / tiger cat,
coffee -> espresso / cup.

Usage::

    python scripts/check_real_weights.py --weights /work/shared/weights/tf_efficientnet_lite1_timm.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data import ImageNetInfo, create_transform, resolve_data_config  # noqa: E402

PHOTOS = ["chelsea", "coffee", "rocket", "astronaut", "camera", "stereo_motorcycle"]


def photo(name: str) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    if name == "stereo_motorcycle":
        arr = arr[0]
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8) if arr.max() <= 1 else arr.astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="safetensors file of tf_efficientnet_lite1")
    ap.add_argument("--model", default="tf_efficientnet_lite1")
    ap.add_argument("--topk", type=int, default=5)
    args = ap.parse_args(argv)
    model = timm.create_model(
        args.model, pretrained=True, pretrained_cfg_overlay=dict(file=args.weights, num_classes=1000)
    ).eval()
    cfg = resolve_data_config({}, model=model)
    transform = create_transform(**cfg)
    info = ImageNetInfo()
    print(f"{args.model} from {args.weights}; eval transform: {cfg}")
    with torch.no_grad():
        for name in PHOTOS:
            probs = model(transform(photo(name)).unsqueeze(0)).softmax(-1)[0]
            top = probs.topk(args.topk)
            labels = ", ".join(
                f"{info.index_to_description(int(i))} {p:.2f}" for p, i in zip(top.values, top.indices)
            )
            print(f"{name:18s} {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
