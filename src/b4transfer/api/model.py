"""A trained model in Python: ``model = b4.load(path)`` for any task, then ``model.predict(images)``
(typed results in memory), ``model.validate(...)``, ``model.export(format="onnx")``,
``model.backbone()`` and ``model.torchvision_backbone()``.

``path`` is a checkpoint (``.ckpt``), a run directory (its best checkpoint, else ``last.ckpt``) or an
export folder (the checkpoint it was exported from, which its ``config.json`` records; without it, a task
that can rebuild its module from the export alone does: a classification export predicts and gives its
backbone, while validating and exporting again need the checkpoint).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from b4transfer.api.runs import Overrides, Run
from b4transfer.errors import NotSupportedError, UserError, UserFileNotFoundError, UserTypeError

__all__ = ["Model", "find_checkpoint", "load"]

ImageLike = str | os.PathLike | Image.Image | np.ndarray


class Model:
    """A fine-tuned model of any task (built by :func:`load`).

    Attributes:
        module: The task's LightningModule (eval mode), for users who go lower.
        checkpoint: The checkpoint it was loaded from (``None``: rebuilt from an export alone).
    """

    def __init__(self, module, *, checkpoint: Path | None) -> None:
        from b4transfer import tasks

        self.module = module
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._task = tasks.get(module.task_name)

    def _checkpoint(self, mode: str) -> Path:
        if self.checkpoint is None:
            raise UserError(
                f"mode={mode} runs on a checkpoint, and this model was rebuilt from an export without one. "
                "Fix: b4.load(<run dir>/checkpoints/best-*.ckpt) (the export's config.json names it)."
            )
        return self.checkpoint

    def __repr__(self) -> str:
        return f"Model(task={self.task!r}, classes={len(self.class_names)}, checkpoint='{self.checkpoint}')"

    @property
    def task(self) -> str:
        """The task's name (``task=``)."""
        return self._task.name

    @property
    def class_names(self) -> list[str]:
        """The class names, in the order of the model's outputs."""
        return list(self.module.class_names)

    def to(self, device: str) -> Model:
        """Move the model to ``device`` (``"cuda"``, ``"cpu"``) for :meth:`predict`; returns itself."""
        self.module.to(device)
        return self

    def predict(self, images: ImageLike | Iterable[ImageLike], *, batch_size: int = 8,
                tta: str | None = None) -> list:
        """Predict in memory: one result per image, in order.

        Args:
            images: Image files, PIL images or ``(H, W, 3)`` uint8 arrays (or one of them).
            batch_size: Images per forward pass.
            tta: Test-time augmentation (``hflip``, ``hflip_scales``) where the task supports it.

        Returns:
            The task's results: :class:`~b4transfer.tasks.classification.results.Classification`
            (``label``, ``score``, ``probs``), :class:`~b4transfer.tasks.detection.results.Detections`
            (``boxes``, ``scores``, ``labels`` in the original pixels), or another task's result type (its
            ``docs/tasks/`` page; e.g. a ``mask`` at the original size).
        """
        from b4transfer.runtime import tta as tta_views

        hook = getattr(self._task, "predict_images", None)
        if hook is None:
            raise NotSupportedError(f"task={self.task} does not support predicting in memory; use "
                                    "b4.predict(ckpt_path, input=folder), which writes the task's files.")
        if tta is not None:
            self._task.refuse("tta", tta, self._task.tta_modes)
        pictures = [_as_image(i) for i in _as_list(images)]
        self.module.tta = tta_views.views(tta) if tta else None
        try:
            return hook(self.module, pictures, batch_size=int(batch_size)) if pictures else []
        finally:
            self.module.tta = None

    def validate(self, data: str | None = None, overrides: Overrides = None, *,
                 run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
        """``mode=validate`` of this checkpoint on ``data`` (a ``data=`` group) and ``overrides``
        (``["data.root=/data/pets"]``); the metrics are ``run.metrics``."""
        from b4transfer.api.runs import validate

        ckpt = self._checkpoint("validate")
        return validate(ckpt, data, overrides, task=self.task, run_dir=run_dir, **keys)

    def test(self, data: str | None = None, overrides: Overrides = None, *,
             run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
        """``mode=test`` of this checkpoint (the test split; the validation split where there is none)."""
        from b4transfer.api.runs import test

        return test(self._checkpoint("test"), data, overrides, task=self.task, run_dir=run_dir, **keys)

    def export(self, format: str | list[str] = "onnx", overrides: Overrides = None, *,
               run_dir: str | os.PathLike | None = None, **keys: Any) -> Run:
        """``mode=export`` of this checkpoint: ``run.export_dir`` holds the ``format`` files
        (``timm``, ``onnx``, ``openvino``, ``onnx_int8``, or a list) and ``backbone/``."""
        from b4transfer.api.runs import export

        return export(self._checkpoint("export"), format, overrides, task=self.task, run_dir=run_dir, **keys)

    def backbone(self, *, out_indices: tuple[int, ...] | None = None):
        """The fine-tuned backbone as timm's ``features_only`` model (eval mode, CPU): a list of feature
        maps per image; ``feature_info`` tells their channels and strides."""
        from b4transfer.backbone.downstream import features_model

        name = self.module.hparams.model["name"]
        return features_model(self.module.backbone, name, out_indices=out_indices)

    def torchvision_backbone(self, *, fpn: bool = True, out_indices: tuple[int, ...] | None = None,
                             fpn_channels: int = 256):
        """The fine-tuned backbone for torchvision's detectors, as
        :func:`b4transfer.api.torchvision_backbone` gives it."""
        from b4transfer.backbone.downstream import TorchvisionBackbone, default_out_indices

        name = self.module.hparams.model["name"]
        indices = out_indices if out_indices is not None else default_out_indices(name, fpn=fpn)
        body = self.backbone(out_indices=indices)
        return TorchvisionBackbone(body, fpn=fpn, fpn_channels=fpn_channels).train()


def load(path: str | os.PathLike) -> Model:
    """Load a trained model of any task.

    Args:
        path: A checkpoint (``.ckpt``), a run directory or an export folder (``run.export_dir``).

    Returns:
        The :class:`Model`.

    Raises:
        UserError: ``path`` is none of those (the message says what it found and the fix).
    """
    from b4transfer import tasks

    try:
        checkpoint = find_checkpoint(path)
    except UserError:
        module = _from_export(Path(path))
        if module is None:
            raise
        return Model(module, checkpoint=None)
    return Model(tasks.load_module(checkpoint), checkpoint=checkpoint)


def _from_export(folder: Path):
    """The module a task rebuilds from its export in ``folder`` alone (its ``load_export``), if any."""
    from b4transfer import tasks

    if not folder.is_dir():
        return None
    for name in tasks.names():
        rebuild = getattr(tasks.get(name), "load_export", None)
        module = rebuild(folder) if rebuild is not None else None
        if module is not None:
            return module
    return None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint behind ``path``: itself (a file), a run directory's best (else last) checkpoint, or
    the checkpoint an export folder's ``config.json`` records (looked for where it was written, then in
    the run directory next to the export)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise UserFileNotFoundError(
            f"{path} does not exist. Pass a checkpoint (.ckpt), a run directory or an export folder."
        )
    for summary in (path / "summary.json", path.parent / "summary.json"):
        found = _recorded(summary, ("best_checkpoint", "last_checkpoint"), summary.parent)
        if found:
            return found
    if (path / "checkpoints" / "last.ckpt").is_file():
        return path / "checkpoints" / "last.ckpt"
    found = _recorded(path / "config.json", ("checkpoint",), path.parent)
    if found:
        return found
    raise UserError(
        f"{path} holds no checkpoint b4transfer can load: not a run directory (checkpoints/), nor an export "
        "whose config.json names a checkpoint that still exists. Fix: pass the checkpoint itself "
        "(<run dir>/checkpoints/best-*.ckpt or last.ckpt); for the backbone alone use b4.load_backbone(path)."
    )


def _recorded(record: Path, keys: tuple[str, ...], run_dir: Path) -> Path | None:
    """The first checkpoint named by ``keys`` in the JSON file ``record`` that exists, as written or
    under ``run_dir/checkpoints/`` (a run directory that was moved)."""
    try:
        written = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    for key in keys:
        value = written.get(key) if isinstance(written, dict) else None
        if not value:
            continue
        for candidate in (Path(value), run_dir / "checkpoints" / Path(value).name):
            if candidate.is_file():
                return candidate
    return None


def _as_list(images: Any) -> list:
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    return list(images)


def _as_image(item: Any) -> Image.Image:
    """An RGB PIL image from a file (read as training reads it: EXIF upright), a PIL image or an array."""
    from b4transfer.data.images import load_rgb, to_rgb

    if isinstance(item, (str, os.PathLike)):
        if not Path(item).is_file():
            raise UserFileNotFoundError(f"image {str(item)!r} does not exist; pass image files, PIL images.")
        return load_rgb(item)
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[-1] == 3 and item.dtype == np.uint8:
        return Image.fromarray(item)
    raise UserTypeError(
        f"cannot predict on {type(item).__name__} {getattr(item, 'shape', '')}: pass image paths, PIL images "
        "or (H, W, 3) uint8 arrays."
    )
