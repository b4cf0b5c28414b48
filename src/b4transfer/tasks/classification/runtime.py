"""A classifier's exports in place of its PyTorch model (``predict.runtime``, see
:mod:`b4transfer.runtime.choice`): ``model.onnx`` (onnxruntime), OpenVINO IR and INT8 ONNX take the
normalised image and give the logits; the module's own head turns them into (calibrated) probabilities.
Agreement with fp32 PyTorch: top-1 (multi-label: every label's decision at 0.5)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from b4transfer.errors import UserError
from b4transfer.runtime.choice import RuntimeAdapter, instance_attrs


class ClassifierRuntime(RuntimeAdapter):
    """onnxruntime, OpenVINO and INT8 runs of a :class:`ClassificationModule`'s exports."""

    runtimes = ("onnxruntime", "openvino", "onnx_int8")

    def image_size(self, module) -> int:
        return int(module.data_config["eval"]["input_size"][-1])

    def dataset(self, cfg: DictConfig, module, paths: Sequence[Path]):
        from b4transfer.tasks.classification.predict import predict_dataset

        return predict_dataset(cfg, module, list(paths))

    def build(self, fmt: str, module, out_dir: Path, *, calibration: Sequence[Path], opset: int) -> None:
        from b4transfer.tasks.classification.export import export_classifier_onnx
        from b4transfer.tasks.classification.parity import export_int8, export_openvino

        if fmt == "onnx":
            export_classifier_onnx(module, out_dir, opset=opset)
        elif fmt == "openvino":
            export_openvino(module, out_dir, opset=opset)
        elif not calibration:
            raise UserError("predict.runtime=onnx_int8 needs calibration images and none were given.")
        else:
            export_int8(module, out_dir, opset=opset, calibration=list(calibration))

    def patch(self, module, run: Callable) -> contextlib.AbstractContextManager:
        def forward(x: torch.Tensor) -> torch.Tensor:  # images -> logits, as module(x) gives them
            image = module.normalize_input(x).detach().float().cpu().contiguous().numpy()
            return torch.from_numpy(run({"image": image})[0]).to(x.device)

        def predict_step(batch, batch_idx: int = 0) -> dict[str, torch.Tensor]:
            x, index = batch
            if module.predict_output != "probs":
                raise RuntimeError("an exported classifier gives class scores, not embeddings")
            return {"index": index, "probs": module.head.probabilities(forward(x).float())}

        return instance_attrs(module, forward=forward, predict_step=predict_step)

    def compare(self, cfg: DictConfig, module, reference: list, fast: list) -> dict[str, Any]:
        ref = torch.cat([o["probs"].float().cpu() for o in reference])
        got = torch.cat([o["probs"].float().cpu() for o in fast])
        if module.head.multi_label:
            top1 = float(((ref > 0.5) == (got > 0.5)).float().mean())
        else:
            top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
        diff = float((ref - got).abs().max())
        return {"images": len(ref), "top1_agreement": top1, "max_abs_prob_diff": diff, "agreement": top1}


ADAPTER = ClassifierRuntime()
