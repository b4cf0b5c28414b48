"""``mode=predict`` (top-k labels per image to CSV) and ``mode=embed`` (pooled features to .npy).

Images are read with the same loader and the same eval transform as validation; unreadable
files are skipped, counted and logged, never a crash half-way.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from b4transfer.data.dataset import PathDataset
from b4transfer.data.images import IMG_EXTENSIONS
from b4transfer.data.splits import Sample, drop_unreadable
from b4transfer.data.transforms import DRAFT_FACTOR, build_transforms, draft_size_for
from b4transfer.inference import InferenceSettings, run_inference
from b4transfer.module import TransferModule, load_module
from b4transfer.train import (
    _plain,
    data_overrides,
    num_workers,
    prepare_run_dir,
    resolve_ckpt,
    write_summary,
)

log = logging.getLogger(__name__)


def list_images(source: str | Path | None) -> list[Path]:
    """A file, or every image under a folder (recursively, sorted)."""
    if source in (None, ""):
        raise ValueError(
            "predict.input is not set: pass predict.input=PATH (an image file or a folder of images)."
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"predict.input={str(source)!r} does not exist. Pass an image file or a folder."
        )
    if path.is_file():
        return [path]
    paths = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")
    )
    if not paths:
        raise ValueError(
            f"predict.input={str(source)!r} holds no images with extensions {', '.join(IMG_EXTENSIONS)}."
        )
    return paths


def _readable(paths: list[Path]) -> tuple[list[Path], int]:
    kept, skipped = drop_unreadable([Sample(p, 0) for p in paths], on_bad_image="skip")
    return [s.path for s in kept], len(skipped)


def _run_predict(cfg: DictConfig, module: TransferModule, paths: list[Path], run_dir: Path, output: str):
    settings = InferenceSettings.from_config(_plain(cfg.predict))
    _, eval_tf = build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])
    draft = draft_size_for(module.data_config["eval"], _plain(cfg.data.get("draft_factor", DRAFT_FACTOR)))
    dataset = PathDataset(paths, transform=eval_tf, draft_size=draft)
    batch_size = int(cfg.predict.get("batch_size") or cfg.data.batch_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers(cfg))
    trainer_kwargs = {**_plain(cfg.trainer), "default_root_dir": str(run_dir)}
    values, report = run_inference(
        module, loader, settings=settings, output=output, trainer_kwargs=trainer_kwargs
    )
    return values, report


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write ``predictions.csv``: path, then the top-k labels and probabilities of each image."""
    ckpt = resolve_ckpt(cfg, required=True)
    paths, skipped = _readable(list_images(cfg.predict.input))
    run_dir = prepare_run_dir(cfg)
    module = load_module(ckpt)
    if module.task == "detection":
        from b4transfer.predict_detection import predict_detection

        return predict_detection(cfg, module, paths, skipped, run_dir, ckpt)
    probs, inference = _run_predict(cfg, module, paths, run_dir, "probs")
    k = min(int(cfg.predict.get("top_k", 5)), len(module.class_names))
    top_p, top_i = probs.topk(k, dim=-1)
    out = run_dir / "predictions.csv"
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["path"]
        for r in range(1, k + 1):
            header += [f"label{r}", f"prob{r}"]
        writer.writerow(header)
        for path, ps, ids in zip(paths, top_p.tolist(), top_i.tolist()):
            row = [str(path)]
            for p, i in zip(ps, ids):
                row += [module.class_names[i], f"{p:.6f}"]
            writer.writerow(row)
    summary = {
        "mode": "predict",
        "checkpoint": ckpt,
        "images": len(paths),
        "skipped_images": skipped,
        "predictions": str(out),
        "inference": inference,
    }
    write_summary(run_dir, summary)
    log.info("Wrote %d predictions to %s", len(paths), out)
    return summary


def embed(cfg: DictConfig) -> dict[str, Any]:
    """Write ``embeddings.npy`` (N, num_features) and ``embeddings.csv`` (row, path).

    With ``ckpt_path`` the fine-tuned backbone is used; without it, the configured backbone
    (``model.pretrained`` / ``model.weights``) — the model card's "image embeddings" use.
    """
    ckpt = resolve_ckpt(cfg, required=False)
    paths, skipped = _readable(list_images(cfg.predict.input))
    run_dir = prepare_run_dir(cfg)
    if ckpt:
        module = load_module(ckpt)
        if module.task != "classification":
            raise ValueError(
                f"mode=embed needs a classification checkpoint; {ckpt} is a {module.task} model. "
                "Fix: pass a classification ckpt_path, or none to embed with the backbone itself."
            )
    else:
        module = TransferModule(class_names=["_0", "_1"], model=_plain(cfg.model), data=data_overrides(cfg))
    features, inference = _run_predict(cfg, module, paths, run_dir, "embedding")
    np.save(run_dir / "embeddings.npy", features.numpy())
    with (run_dir / "embeddings.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path"])
        writer.writerows((i, str(p)) for i, p in enumerate(paths))
    summary = {
        "mode": "embed",
        "checkpoint": ckpt,
        "images": len(paths),
        "skipped_images": skipped,
        "shape": list(features.shape),
        "embeddings": str(run_dir / "embeddings.npy"),
        "inference": inference,
    }
    write_summary(run_dir, summary)
    return summary
