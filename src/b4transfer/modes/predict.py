"""``mode=predict`` and ``mode=embed``: the task's outputs for every image of ``predict.input``.

Images are read with the same loader as training; unreadable files are skipped, counted and logged,
never a crash half-way. What is written (CSV, COCO JSON, drawn PNGs, embeddings) is the task's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from b4transfer import tasks
from b4transfer.data.images import IMG_EXTENSIONS, images_under
from b4transfer.data.splits import Sample, drop_unreadable, shown
from b4transfer.errors import UserError, UserFileNotFoundError
from b4transfer.modes.common import checkpoint_task, warn_ignored_data
from b4transfer.runs import prepare_run_dir, resolve_ckpt, write_summary
from b4transfer.runtime import tta
from b4transfer.runtime.choice import choose, requested

log = logging.getLogger(__name__)


def list_images(source: str | Path | None) -> list[Path]:
    """A file, or every image under a folder (recursively, sorted)."""
    if source in (None, ""):
        raise UserError(
            "predict.input is not set: pass predict.input=PATH (an image file or a folder of images)."
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise UserFileNotFoundError(
            f"predict.input={str(source)!r} does not exist. Pass an image file or a folder."
        )
    if path.is_file():
        return [path]
    paths = images_under(path)
    if not paths:
        raise UserError(
            f"predict.input={str(source)!r} holds no images with extensions {', '.join(IMG_EXTENSIONS)}."
        )
    return paths


def readable_images(source: str | Path | None) -> tuple[list[Path], int]:
    """The readable images of ``predict.input`` and the number skipped; refuses when none is readable."""
    paths = list_images(source)
    kept, skipped = drop_unreadable([Sample(p, 0) for p in paths], on_bad_image="skip")
    if not kept:
        raise UserError(
            f"predict.input={str(source)!r}: none of its {len(paths)} image(s) could be read "
            f"({shown([f'{p.name}: {why}' for p, why in skipped])}). Fix: pass readable images."
        )
    return [s.path for s in kept], len(skipped)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """``mode=predict``: the checkpoint's task writes its predictions for ``predict.input``."""
    ckpt, module, task = checkpoint_task(cfg)
    paths, skipped = readable_images(cfg.predict.input)
    run_dir = prepare_run_dir(cfg)
    summary = {"mode": "predict", "task": task.name, "checkpoint": ckpt, "images": len(paths),
               "skipped_images": skipped}
    module.tta = tta.views(cfg.get("tta"))
    if module.tta:
        summary["tta"] = {"name": cfg.tta, "views": [str(v) for v in module.tta]}
    module.runtime_choice = choose_runtime(cfg, task, module, paths, ckpt, run_dir)
    summary["runtime"] = module.runtime_choice.report
    summary.update(task.predict(cfg, module, paths, run_dir))
    write_summary(run_dir, summary)
    return summary


def choose_runtime(cfg: DictConfig, task, module, paths: list[Path], ckpt: str, run_dir: Path):
    """``predict.runtime`` for this job (:func:`b4transfer.runtime.choice.choose`): the sample and the INT8
    calibration images are the first input images."""
    return choose(cfg, task, module, paths=paths, calibration=paths, ckpt=ckpt, run_dir=run_dir)


def embed(cfg: DictConfig) -> dict[str, Any]:
    """``mode=embed``: per-image features from the checkpoint's backbone, or without ``ckpt_path`` from
    the configured backbone itself (``model.pretrained`` / ``model.weights``)."""
    ckpt = resolve_ckpt(cfg, required=False)
    module = tasks.load_module(ckpt) if ckpt else None
    task = tasks.get(module.task_name) if module is not None else tasks.from_config(cfg)
    task.check_config(cfg)
    if module is not None:
        warn_ignored_data(cfg, module, ckpt)
    paths, skipped = readable_images(cfg.predict.input)
    run_dir = prepare_run_dir(cfg)
    summary = {"mode": "embed", "task": task.name, "checkpoint": ckpt, "images": len(paths),
               "skipped_images": skipped}
    if requested(cfg) != "torch":  # auto: embeddings come from PyTorch (one line says so)
        summary["runtime"] = choose_runtime(cfg, task, module, paths, ckpt, run_dir).report
    summary.update(task.embed(cfg, module, paths, run_dir))
    write_summary(run_dir, summary)
    return summary
