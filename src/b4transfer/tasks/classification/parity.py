"""Classification exports beyond timm / ONNX (OpenVINO IR, INT8 ONNX) and the parity check: the
validation split scored through each artefact's own runtime and preprocessing (top-1 accuracy, or
macro mAP for multi-label), to compare with the PyTorch model.

Preprocessing per artefact: ``pytorch`` the module's eval transform; ``timm`` what plain timm resolves
from the export's ``config.json`` (``resolve_data_config(model=..., use_test_size=True)``); ``onnx``,
``openvino`` and ``onnx_int8`` the data config stored in the ONNX metadata, as a timm eval transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MultilabelAveragePrecision

from b4transfer.data.images import load_rgb
from b4transfer.export.timm_format import load_exported
from b4transfer.runtime.runtimes import INT8_NAME, open_runtime, quantize_int8, to_openvino
from b4transfer.tasks.classification.onnx_export import ONNX_NAME, onnx_metadata

__all__ = ["export_int8", "export_openvino", "score_classifier"]


class _Images(Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_rgb(self.paths[i]))


def _onnx_transform(out_dir: Path) -> Callable:
    flat = onnx_metadata(Path(out_dir) / ONNX_NAME)["data_config"]
    return create_transform(
        input_size=tuple(flat.get("test_input_size") or flat["input_size"]),
        crop_pct=flat.get("test_crop_pct") or flat["crop_pct"], interpolation=flat["interpolation"],
        mean=tuple(flat["mean"]), std=tuple(flat["std"]), is_training=False,
    )


def ensure_onnx(module, out_dir: Path, opset: int) -> Path:
    """``out_dir/model.onnx``, exported now unless this export already wrote it."""
    from b4transfer.tasks.classification.export import export_classifier_onnx

    path = Path(out_dir) / ONNX_NAME
    if not path.is_file():
        export_classifier_onnx(module, out_dir, opset=opset)
    return path


def export_openvino(module, out_dir: Path, *, opset: int) -> dict[str, Any]:
    """``export.format=openvino``: ``model.xml`` + ``model.bin`` from the (checked) ONNX export."""
    xml = to_openvino(ensure_onnx(module, out_dir, opset), out_dir)
    return {"openvino": {"path": str(xml)}}


def export_int8(module, out_dir: Path, *, opset: int, calibration: Sequence[Path], batch_size: int = 16):
    """``export.format=onnx_int8``: ``model_int8.onnx``, statically quantised on ``calibration`` images
    (preprocessed as the ONNX model expects)."""
    onnx_path = ensure_onnx(module, out_dir, opset)
    loader = DataLoader(_Images(calibration, _onnx_transform(out_dir)), batch_size=batch_size)
    path = quantize_int8(onnx_path, Path(out_dir) / INT8_NAME, ({"image": x.numpy()} for x in loader))
    return {"onnx_int8": {"path": str(path), "calibration_images": len(calibration)}}


@torch.no_grad()
def score_classifier(fmt: str, module, out_dir: Path, splits, *, batch_size: int = 32) -> dict[str, Any]:
    """The validation metric of export ``fmt`` (``pytorch``: ``module`` itself) run by its own runtime."""
    if fmt == "pytorch":
        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        transform = create_transform(**{k: v for k, v in module.data_config["eval"].items() if k in keys})
        model = module.eval().cpu()
    elif fmt == "timm":
        model = load_exported(out_dir)
        transform = create_transform(**resolve_data_config({}, model=model, use_test_size=True))
    else:
        transform, runtime = _onnx_transform(out_dir), open_runtime(fmt, out_dir)

        def model(x):
            return torch.from_numpy(runtime({"image": x.numpy()})[0])

    samples = splits.val
    loader = DataLoader(_Images([s.path for s in samples], transform), batch_size=batch_size)
    logits = torch.cat([model(x).float() for x in loader])
    if splits.multi_label:
        targets = torch.zeros_like(logits, dtype=torch.long)
        for i, s in enumerate(samples):
            targets[i, list(s.target)] = 1
        metric = MultilabelAveragePrecision(num_labels=logits.shape[1], average="macro")
        value = metric(logits.sigmoid(), targets)
        return {"metric": "val/map", "value": round(float(value), 6), "images": len(samples)}
    targets = torch.tensor([int(s.target) for s in samples])
    value = float((logits.argmax(-1) == targets).float().mean())
    return {"metric": "val/acc1", "value": round(value, 6), "images": len(samples)}
