"""Classification outputs: ``mode=predict`` (top-k labels per image to CSV), ``mode=embed`` (pooled
features to .npy), and the fast inference loop behind both (:func:`run_inference`).

Reduced precision changes the outputs slightly, so the first ``predict.check_agreement`` images are
run again in fp32 eager (NCHW, no autocast) and the top-1 agreement (multi-label: agreement of every
label's decision at 0.5; embeddings: the smallest cosine similarity) and the largest absolute
difference are reported in ``summary.json``, with a warning when agreement falls below 99 %.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from b4transfer.config import num_workers, plain
from b4transfer.data.dataset import PathDataset
from b4transfer.data.transforms import DRAFT_FACTOR, draft_size_for, uint8_eval_transform
from b4transfer.runtime.inference import (
    MIN_AGREEMENT,
    InferenceSettings,
    predict_outputs,
    predict_trainer_setup,
)

log = logging.getLogger(__name__)


def predict_dataset(cfg: DictConfig, module, paths: list[Path]) -> PathDataset:
    """``paths`` as prediction reads them: draft-decoded, resized and cropped, ``uint8`` tensors (the module
    normalises them where it runs, :meth:`ClassificationModule.normalize_input`)."""
    draft = draft_size_for(module.data_config["eval"], plain(cfg.data.get("draft_factor", DRAFT_FACTOR)))
    return PathDataset(paths, transform=uint8_eval_transform(module.data_config["eval"]), draft_size=draft)


def _run_predict(cfg: DictConfig, module, paths: list[Path], run_dir: Path, output: str):
    settings = InferenceSettings.from_config(plain(cfg.predict))
    batch_size = int(cfg.predict.get("batch_size") or cfg.data.batch_size)
    _, device, _ = predict_trainer_setup(settings, plain(cfg.trainer))
    loader = DataLoader(predict_dataset(cfg, module, paths), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers(cfg), pin_memory=device.type == "cuda")
    trainer_kwargs = {**plain(cfg.trainer), "default_root_dir": str(run_dir)}
    return run_inference(module, loader, settings=settings, output=output, trainer_kwargs=trainer_kwargs)


def write_predictions(cfg: DictConfig, module, paths: list[Path], run_dir: Path) -> dict[str, Any]:
    """Write ``predictions.csv``: path, then the top-k labels and probabilities of each image."""
    probs, inference = _run_predict(cfg, module, paths, run_dir, "probs")
    k = min(int(cfg.predict.get("top_k", 5)), len(module.class_names))
    top_p, top_i = probs.topk(k, dim=-1)
    out = run_dir / "predictions.csv"
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["path"]
        for r in range(1, k + 1):
            header += [f"label{r}", f"prob{r}"]
        multi = module.head.multi_label  # and the labels on, each at its calibrated threshold
        writer.writerow(header + (["labels"] if multi else []))
        on = module.head.decisions(probs).tolist() if multi else [None] * len(paths)
        for path, ps, ids, flags in zip(paths, top_p.tolist(), top_i.tolist(), on):
            row = [str(path)]
            for p, i in zip(ps, ids):
                row += [module.class_names[i], f"{p:.6f}"]
            if multi:
                row.append(" ".join(n for n, f in zip(module.class_names, flags) if f))
            writer.writerow(row)
    log.info("Wrote %d predictions to %s", len(paths), out)
    calibration = module.hparams.get("calibration")
    return {"predictions": str(out), "inference": inference, "calibration_applied": calibration}


def write_embeddings(cfg: DictConfig, module, paths: list[Path], run_dir: Path) -> dict[str, Any]:
    """Write ``embeddings.npy`` (N, num_features) and ``embeddings.csv`` (row, path)."""
    features, inference = _run_predict(cfg, module, paths, run_dir, "embedding")
    np.save(run_dir / "embeddings.npy", features.numpy())
    with (run_dir / "embeddings.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path"])
        writer.writerows((i, str(p)) for i, p in enumerate(paths))
    out = run_dir / "embeddings.npy"
    return {"shape": list(features.shape), "embeddings": str(out), "inference": inference}


def run_inference(
    module: L.LightningModule,
    loader: DataLoader,
    *,
    settings: InferenceSettings,
    output: str = "probs",
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Predict every batch of ``loader`` (``(images, index)`` batches) with the fast settings.

    Args:
        module: A :class:`~b4transfer.tasks.classification.module.ClassificationModule`.
        loader: Yields ``(images, index)``; the outputs are returned in index order.
        settings: Precision, memory format, compilation, agreement check.
        output: ``"probs"`` or ``"embedding"`` (what ``module.predict_step`` returns).
        trainer_kwargs: More ``lightning.Trainer`` arguments (``accelerator``, ``default_root_dir``...).

    Returns:
        ``(values, report)``: ``(N, K)`` probabilities or ``(N, C)`` embeddings in index order, and
        the settings used plus the agreement with fp32 eager (when checked).
    """
    module.predict_output = output
    outputs, report, check_on = predict_outputs(
        module, loader, settings=settings, trainer_kwargs=trainer_kwargs
    )
    values = _in_order(outputs, output)
    if check_on is not None:
        report["agreement_vs_fp32"] = agreement(
            module, loader.dataset, values, n=settings.check_agreement, output=output, device=check_on
        )
    return values, report


def _in_order(outputs: list[dict], output: str) -> torch.Tensor:
    index = torch.cat([o["index"] for o in outputs])
    return torch.cat([o[output].float().cpu() for o in outputs])[index.argsort()]


@torch.no_grad()
def agreement(
    module: L.LightningModule,
    dataset: Dataset,
    fast_values: torch.Tensor,
    *,
    n: int,
    output: str,
    device: torch.device,
) -> dict[str, Any]:
    """Re-run the first ``n`` images in fp32 eager and compare with ``fast_values[:n]``."""
    n = min(n, len(dataset))
    x = module.normalize_input(torch.stack([dataset[i][0] for i in range(n)]))
    module.to(device).eval()
    features = torch.cat([module.backbone(chunk.to(device)) for chunk in x.split(16)]).float().cpu()
    fast = fast_values[:n].float()
    if output == "embedding":
        cosine = torch.nn.functional.cosine_similarity(features, fast, dim=-1)
        report = {"images": n, "min_cosine": float(cosine.min()),
                  "max_abs_diff": float((features - fast).abs().max())}
    else:
        head = module.head.to(device)
        if module.tta:  # the same views as the fast run
            ref = torch.cat([module.probabilities(chunk.to(device)).cpu() for chunk in x.split(16)])
        else:
            ref = head.probabilities(head(features.to(device))).float().cpu()
        if head.multi_label:  # every label's yes/no decision at 0.5
            top1 = float(((ref > 0.5) == (fast > 0.5)).float().mean())
        else:
            top1 = float((ref.argmax(-1) == fast.argmax(-1)).float().mean())
        report = {"images": n, "top1_agreement": top1, "max_abs_prob_diff": float((ref - fast).abs().max())}
        if top1 < MIN_AGREEMENT:
            log.warning(
                "Fast inference agrees with fp32 on top-1 for only %.1f%% of %d images. HINT: "
                "predict.precision=32 gives exact fp32 predictions.", 100 * top1, n,
            )
    log.info("Fast inference vs fp32 eager: %s", report)
    return report
