"""Classification results in memory, for the Python API: ``b4.load(path).predict(images)``.

The images go through the evaluation transform of the checkpoint (the same resize, crop and
normalisation as ``mode=validate`` and ``mode=predict``) and the module's own ``predict_step``
(calibrated probabilities; test-time augmentation when ``module.tta`` is set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from b4transfer.data.transforms import build_transforms

__all__ = ["Classification", "classify_images"]


@dataclass(frozen=True)
class Classification:
    """What the classifier says about one image.

    Attributes:
        label: The most probable class.
        score: Its probability.
        probs: Every class's probability (softmax over the classes; multi-label: each label's sigmoid),
            after the calibration fitted on validation.
        labels: The labels that are on: ``(label,)`` for a single-label model; for a multi-label model
            every label at or above its calibrated threshold (0.5 until calibrated).
    """

    label: str
    score: float
    probs: dict[str, float]
    labels: tuple[str, ...]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable classes with their probabilities, most probable first."""
        return sorted(self.probs.items(), key=lambda item: -item[1])[:k]


@torch.no_grad()
def classify_images(module, images: list[Image.Image], *, batch_size: int = 16) -> list[Classification]:
    """One :class:`Classification` per image (RGB PIL images), in order."""
    _, eval_tf = build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])
    module.eval()
    device = next(module.parameters()).device
    names, out = list(module.class_names), []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = torch.stack([eval_tf(image) for image in chunk]).to(device)
        probs = module.predict_step((x, torch.arange(len(chunk))), 0)["probs"].float().cpu()
        on = module.head.decisions(probs) if module.head.multi_label else None
        for i, row in enumerate(probs):
            best = int(row.argmax())
            labels = (names[best],) if on is None else tuple(n for n, f in zip(names, on[i]) if f)
            out.append(Classification(names[best], float(row[best]), dict(zip(names, row.tolist())), labels))
    return out
