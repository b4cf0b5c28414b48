"""Detection results in memory, for the Python API: ``b4.load(path).predict(images)``.

The images are letterboxed as in ``mode=predict`` and detected by the module's own ``predict_step``;
the boxes come back in the pixels of each original image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from b4transfer.data.boxes import make_sample
from b4transfer.data.loaders import fill_colour
from b4transfer.tasks.detection.data.transforms import DetectionTransform

__all__ = ["Detections", "detect_images"]


@dataclass(frozen=True)
class Detections:
    """The objects found in one image, most confident first.

    Attributes:
        boxes: ``(N, 4)`` float ``x1, y1, x2, y2`` in the original image's pixels.
        scores: ``(N,)`` confidences in 0..1.
        label_ids: ``(N,)`` class indices into the model's class names.
        labels: The class name of each box.
        score_thresholds: Per class name, the score from which a box counts (calibrated on validation
            after training; else ``predict.draw_score_thresh``'s default, 0.3).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    label_ids: torch.Tensor
    labels: list[str]
    score_thresholds: dict[str, float]

    def __len__(self) -> int:
        return len(self.scores)

    def confident(self) -> Detections:
        """Only the boxes scoring at least their class's threshold."""
        limits = torch.tensor([self.score_thresholds[n] for n in self.labels], dtype=self.scores.dtype)
        keep = self.scores >= limits if len(self.labels) else self.scores > 0
        return Detections(self.boxes[keep], self.scores[keep], self.label_ids[keep],
                          [n for n, k in zip(self.labels, keep.tolist()) if k], self.score_thresholds)


@torch.no_grad()
def detect_images(module, images: list[Image.Image], *, batch_size: int = 8,
                  default_threshold: float = 0.3) -> list[Detections]:
    """One :class:`Detections` per image (RGB PIL images), in order."""
    transform = DetectionTransform(module.image_size, fill=fill_colour(module.data_config["eval"]["mean"]),
                                   train=False)
    module.eval()
    device = next(module.parameters()).device
    names = list(module.class_names)
    thresholds = dict(zip(names, module.score_thresholds(default_threshold)))
    out = []
    for start in range(0, len(images), batch_size):
        tensors, metas = [], []
        for index, image in enumerate(images[start : start + batch_size], start):
            sample = make_sample(Path(f"image-{index}"), [], [], image_id=index, size=image.size)
            tensor, target = transform(image, sample)
            tensors.append(tensor.to(device))
            metas.append({"index": index, "scale": target["scale"], "orig_size": target["orig_size"]})
        for det in module.predict_step((tensors, metas)):
            labels = [names[i] for i in det["labels"].tolist()]
            out.append(Detections(det["boxes"], det["scores"], det["labels"], labels, thresholds))
    return out
