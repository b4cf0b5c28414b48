"""``SegmentationModule``: a timm ``features_only`` backbone plus a decoder head, as one LightningModule.

``self.backbone`` is the timm feature extractor (what freezing schedules, stages and the backbone optimizer
groups act on) and ``self.head`` the decoder + classifier (:class:`~b4transfer.tasks.segmentation.head.
SegmentationHead`), which counts as head for every schedule. Batches are ``(images, masks)`` from
:class:`~b4transfer.tasks.segmentation.data.datamodule.MaskDataModule`: images in 0..1, normalised here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from b4transfer.backbone import canvas_data_config
from b4transfer.runtime import tta
from b4transfer.settings.module import ModuleSettings, kwargs_of
from b4transfer.tasks.base import TaskModule, build_backbone, metric_name
from b4transfer.tasks.segmentation.data.masks import IGNORE_INDEX, default_palette
from b4transfer.tasks.segmentation.head import Segmenter, build_head, check_head
from b4transfer.tasks.segmentation.losses import SegmentationLoss
from b4transfer.tasks.segmentation.metrics import build_metrics, summarize
from b4transfer.tasks.segmentation.settings import SegmentationSettings

SHOWN_IMAGES = 4  # validation images drawn in val_predictions.png
SUMMARY_KEYS = ("miou", "pixel_acc", "dice")  # logged as <stage>/<key> every validation


def build_feature_backbone(model: dict[str, Any], head: dict[str, Any] | None) -> torch.nn.Module:
    """The ``features_only`` backbone returning the maps at ``head.feature_strides`` (the decoder's
    default strides when null)."""
    return build_backbone(model, check_head(head)["feature_strides"])


def colourize(mask: np.ndarray, palette, ignore_index: int) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 colours (ignored pixels white)."""
    table = np.array(list(palette) + [(255, 255, 255)], np.uint8)
    return table[np.where((mask >= 0) & (mask < len(palette)), mask, len(palette))]


class SegmentationModule(TaskModule):
    """Fine-tunes a pretrained timm backbone with a semantic FPN or U-Net decoder.

    Args:
        loss: ``class_weights`` (resolved: one per class, or ``None``) and ``dice_weight``.
        ignore_index: Mask value of pixels to ignore.
        palette: RGB colour per class (figures, written masks); ``None``: the VOC colour map.
        **shared: :class:`~b4transfer.tasks.base.TaskModule`'s: ``class_names`` (index = mask value),
            ``model``, ``head`` (``decoder``: fpn | unet, ``feature_strides``, ``fpn_channels``,
            ``seg_channels``, ``decoder_channels``, ``dropout``), ``optim``, ``scheduler``, ``data``
            (``image_size``: canvas side, train and eval, ``mean``, ``std``, ``resize``) and ``backbone``
            (from :func:`build_feature_backbone` with the same ``head``).
    """

    task_name = "segmentation"
    schema = SegmentationSettings
    data_keys = ("image_size", "mean", "std", "resize")  # the canvas side, the normalisation, the eval fit

    def __init__(
        self, *, loss: dict[str, Any] | None = None, ignore_index: int = IGNORE_INDEX, palette=None,
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        settings = self.settings
        classes = len(self.class_names)
        self.head = build_head(self.backbone, classes, kwargs_of(settings.head))
        self.data_config = canvas_data_config(self.backbone, kwargs_of(settings.data))  # one canvas size
        eval_cfg = self.data_config["eval"]
        self.resize = (settings.data and settings.data.resize) or "letterbox"
        self.ignore_index = int(ignore_index)
        self.palette = [tuple(c) for c in (palette or default_palette(classes))]
        loss = kwargs_of(settings.loss)
        self.criterion = SegmentationLoss(
            ignore_index=self.ignore_index,
            class_weights=loss.get("class_weights"),
            dice_weight=loss.get("dice_weight") or 0.0,
        )
        self.register_buffer("mean", torch.tensor(eval_cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(eval_cfg["std"]).view(1, -1, 1, 1), persistent=False)
        self.init_metrics(lambda: build_metrics(classes, self.ignore_index))
        self._shown: list[tuple] = []

    def feature_strides(self, settings: ModuleSettings) -> list[int]:
        """``head.feature_strides``, by default the decoder's."""
        return check_head(kwargs_of(settings.head))["feature_strides"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images in 0..1 -> ``(N, K, H, W)`` logits."""
        return self.head(self.backbone((images - self.mean) / self.std), images.shape[-2:])

    def tta_forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the views ``self.tta``, each mapped back to the input's frame."""
        return tta.average_dense(lambda view: self(view).float(), images, self.tta)

    def segmenter(self) -> Segmenter:
        """The standalone model (shares this module's layers)."""
        return Segmenter(
            self.backbone, self.head, self.data_config["eval"]["mean"], self.data_config["eval"]["std"]
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.criterion(self(images), masks)
        self.log_train({"train/loss": loss}, batch_size=len(images), prog_bar=("train/loss",))
        return loss

    def metric_names(self) -> list[str]:
        per_class = [f"val/{kind}_{metric_name(n)}" for n in self.class_names for kind in ("iou", "dice")]
        return ["train/loss", "val/loss", *(f"val/{key}" for key in SUMMARY_KEYS), *per_class]

    # -------------------------------------------------------------- evaluation (steps: TaskModule)
    def eval_losses(self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
        return {"loss": self.criterion(outputs, targets)}

    def update_metrics(self, metrics, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(outputs.argmax(1), targets)

    def on_validation_batch_end(self, outputs: torch.Tensor, batch, batch_idx: int, dataloader_idx: int = 0):
        """Keep the first :data:`SHOWN_IMAGES` validation images with their masks and predictions."""
        images, masks = batch
        for i in range(min(len(images), SHOWN_IMAGES - len(self._shown))):
            self._shown.append((images[i].float().cpu(), masks[i].cpu(), outputs[i].argmax(0).cpu()))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking and not getattr(self, "lr_finding", False):
            self._save_figure(Path(self.trainer.default_root_dir) / "val_predictions.png")
        self._shown = []

    def log_metrics(self, values: dict[str, Any], stage: str) -> None:
        values = summarize(values)
        for key in ("miou", "pixel_acc", "dice"):
            self.log(f"{stage}/{key}", values[key], prog_bar=key == "miou", sync_dist=True)
        for name, iou, dice in zip(self.class_names, values["iou_per_class"], values["dice_per_class"]):
            if not torch.isnan(iou):  # a class absent from labels and predictions has no IoU
                self.log(f"{stage}/iou_{metric_name(name)}", iou, sync_dist=True)
                self.log(f"{stage}/dice_{metric_name(name)}", dice, sync_dist=True)

    def _save_figure(self, path: Path) -> None:
        """A few validation images, each as image | true mask | predicted mask (ignored pixels white)."""
        if not self._shown or not self.trainer.is_global_zero:
            return
        rows = []
        for image, mask, pred in self._shown:
            pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
            cells = [
                pixels,
                colourize(mask.numpy(), self.palette, self.ignore_index),
                colourize(pred.numpy(), self.palette, self.ignore_index),
            ]
            rows.append(
                np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells], 1)
            )
        Image.fromarray(np.concatenate(rows, 0)).save(path)

    def predict_step(self, batch, batch_idx: int = 0) -> list[dict]:
        images, meta = batch
        logits = self.infer(images).float()
        out = []
        for i in range(len(images)):
            h, w = (int(v) for v in meta["content"][i])
            size = tuple(int(v) for v in meta["orig"][i])
            crop = logits[i : i + 1, :, :h, :w]  # letterbox: the content is top-left
            full = torch.nn.functional.interpolate(crop, size=size, mode="bilinear", align_corners=False)
            dtype = torch.uint8 if len(self.class_names) <= 256 else torch.int32  # 16-bit PNGs beyond 256
            out.append({"index": int(meta["index"][i]), "mask": full[0].argmax(0).to(dtype).cpu()})
        return out
