"""A segmenter's ONNX export in place of its PyTorch model (``predict.runtime=onnxruntime``, see
:mod:`b4transfer.runtime.choice`): ``model.onnx`` takes the 0..1 canvases and gives the logits, as the
module's forward does, so prediction cuts out and resizes them and validation scores them as before.
Agreement with fp32 PyTorch: the share of pixels whose class agrees. (The task exports no OpenVINO or
INT8 model.)"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from b4transfer.data.loaders import fill_colour
from b4transfer.runtime.choice import RuntimeAdapter, instance_attrs
from b4transfer.tasks.segmentation.data.datamodule import MaskPathDataset


class SegmenterRuntime(RuntimeAdapter):
    """onnxruntime runs of a :class:`SegmentationModule`'s ONNX export."""

    runtimes = ("onnxruntime",)

    def image_size(self, module) -> int:
        return int(module.image_size)

    def dataset(self, cfg: DictConfig, module, paths: Sequence[Path]):
        fill = fill_colour(module.data_config["eval"]["mean"])
        return MaskPathDataset(list(paths), module.image_size, fill, module.resize)

    def build(self, fmt: str, module, out_dir: Path, *, calibration: Sequence[Path], opset: int) -> None:
        from b4transfer.tasks.segmentation.export import export_segmenter_onnx

        export_segmenter_onnx(module, out_dir, opset=opset, check_images=list(calibration) or None)

    def patch(self, module, run: Callable) -> contextlib.AbstractContextManager:
        def forward(images: torch.Tensor) -> torch.Tensor:
            got = run({"image": images.detach().float().cpu().contiguous().numpy()})[0]
            return torch.from_numpy(got).to(images.device)

        return instance_attrs(module, forward=forward)

    def compare(self, cfg: DictConfig, module, reference: list, fast: list) -> dict[str, Any]:
        ref = {d["index"]: d["mask"] for batch in reference for d in batch}
        got = {d["index"]: d["mask"] for batch in fast for d in batch}
        same = sum(int((ref[i] == got[i]).sum()) for i in ref)
        total = sum(m.numel() for m in ref.values())
        share = same / max(1, total)
        return {"images": len(ref), "pixel_agreement": share, "agreement": share}


ADAPTER = SegmenterRuntime()
