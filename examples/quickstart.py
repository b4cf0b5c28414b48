"""b4transfer from Python, notebook style: train a classifier, predict, validate, export ONNX, take the
fine-tuned backbone.

Run it as a script (``python examples/quickstart.py [WORKDIR]``) or cell by cell (``# %%``) in an editor
or notebook. It needs no network: the images are generated, and the backbone is timm's tiny
``test_efficientnet`` from random weights (for real work: ``model=efficientnet_b4``, the default, with
its pretrained weights). Everything is written under ``WORKDIR`` (default ``quickstart-output/``); the
working directory is never changed.
"""

# %%
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import b4transfer as b4

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
TINY = [
    "model=test_efficientnet",  # timm's tiny EfficientNet: seconds on a CPU
    "model.pretrained=false",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "precision=32-true",
    "data.image_size=48",
    "data.batch_size=8",
    "data.num_workers=0",
]


def make_images(root: Path, per_class: int = 8, size: int = 48) -> Path:
    """``root/<colour>/<i>.png``: noisy images whose mean colour is the class."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, size=(size, size, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def main(workdir: Path) -> dict:
    """Every step of the quickstart, into ``workdir``; returns what each step gave."""
    workdir = Path(workdir)
    # %% 1. a folder of class sub-folders (data=folder reads root/<class>/*.png)
    images = make_images(workdir / "images")

    # %% 2. train: the same keys as `python run.py data=folder data.root=... trainer.max_epochs=2`
    # (random weights and two epochs: the accuracy is not the point here, the mechanics are)
    run = b4.train(data="folder", overrides=[*TINY, f"data.root={images}"], run_dir=workdir / "train")
    print("validation accuracy:", run.metrics["val/acc1"], "| best checkpoint:", run.best_checkpoint)

    # %% 3. load the export and predict three images: a file, a PIL image, an array
    model = b4.load(run.export_dir)
    picture = Image.open(images / "green" / "001.png")
    array = np.asarray(Image.open(images / "blue" / "002.png").convert("RGB"))
    results = model.predict([images / "red" / "000.png", picture, array])
    for result in results:
        print(f"{result.label} ({result.score:.2f})", result.top(3))

    # %% 4. validate the model on the same folder (mode=validate): metrics as a dict
    validated = model.validate(data="folder", overrides=[*TINY, f"data.root={images}"],
                               run_dir=workdir / "validate")
    print("validate:", validated.metrics)

    # %% 5. export ONNX (mode=export export.format=onnx): checked against PyTorch with onnxruntime
    exported = model.export(format="onnx", run_dir=workdir / "export")
    print("ONNX:", exported.export_dir / "model.onnx")

    # %% 6. the fine-tuned backbone: timm's features_only model, and a body for torchvision's detectors
    body = b4.load_backbone(run.export_dir)  # = timm.create_model("local-dir:<export>/backbone", ...)
    with torch.no_grad():
        maps = body(torch.rand(1, 3, 64, 64))
    print("feature maps:", [tuple(m.shape) for m in maps])
    detector_body = b4.torchvision_backbone(run.export_dir, fpn=True)
    print("torchvision backbone: out_channels", detector_body.out_channels)
    return {
        "train": run, "labels": [r.label for r in results], "validate": validated, "export": exported,
        "feature_shapes": [tuple(m.shape) for m in maps], "out_channels": detector_body.out_channels,
    }


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quickstart-output"))
