"""Segmentation results in memory, for the Python API: ``b4.load(path).predict(images)``.

The images are put on the canvas as in ``mode=predict`` (letterbox or stretch) and segmented by the
module's own ``predict_step``; each mask comes back at its image's original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from b4transfer.data.loaders import fill_colour
from b4transfer.tasks.segmentation.data.transforms import MaskTransform, content_size

__all__ = ["Segmentation", "segment_images"]


@dataclass(frozen=True)
class Segmentation:
    """The class of every pixel of one image.

    Attributes:
        mask: ``(H, W)`` class indices at the image's original size (``uint8``; ``int32`` beyond 256
            classes).
        class_names: The name of each class index.
        palette: The RGB colour of each class (as the mask PNGs of ``mode=predict``).
    """

    mask: np.ndarray
    class_names: list[str]
    palette: list[tuple[int, int, int]]

    def shares(self) -> dict[str, float]:
        """Each class's share of the pixels."""
        counts = np.bincount(self.mask.reshape(-1).astype(np.int64), minlength=len(self.class_names))
        return {n: float(c) / self.mask.size for n, c in zip(self.class_names, counts)}

    def colourized(self) -> Image.Image:
        """The mask as an RGB picture in the class colours."""
        palette = np.asarray(self.palette, np.uint8)
        return Image.fromarray(palette[np.clip(self.mask, 0, len(palette) - 1)])


@torch.no_grad()
def segment_images(module, images: list[Image.Image], *, batch_size: int = 8) -> list[Segmentation]:
    """One :class:`Segmentation` per image (RGB PIL images), in order."""
    fill = fill_colour(module.data_config["eval"]["mean"])
    transform = MaskTransform(module.image_size, fill=fill, ignore_index=0, train=False, resize=module.resize)
    module.eval()
    device = next(module.parameters()).device
    palette = [tuple(int(v) for v in c) for c in module.palette]
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        canvases, contents, origs = [], [], []
        for image in chunk:
            canvas, _ = transform(image, None)
            canvases.append(canvas)
            contents.append(content_size(image.height, image.width, transform.size, transform.resize))
            origs.append((image.height, image.width))
        meta = {"index": torch.arange(start, start + len(chunk)), "content": torch.tensor(contents),
                "orig": torch.tensor(origs)}
        for result in module.predict_step((torch.stack(canvases).to(device), meta)):
            out.append(Segmentation(result["mask"].numpy(), list(module.class_names), palette))
    return out
