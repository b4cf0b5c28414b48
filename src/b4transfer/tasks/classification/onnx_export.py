"""ONNX export of a fine-tuned classifier, verified with onnxruntime against PyTorch.

:func:`export_onnx` writes ``model.onnx`` (``mode=export export.format=onnx``):

- input ``image``: ``(N, 3, H, W)`` float32, resized / cropped / normalised as the exported data
  config says (``H, W`` = the eval size, 384 for B4); the batch dimension is dynamic;
- outputs ``logits``: ``(N, K)``, and ``probabilities``: ``(N, K)``, softmax of ``logits / T`` with the
  calibrated temperature ``T`` (1 when not calibrated), or sigmoid when ``multi_label``;
- metadata (``onnx.load(path).metadata_props``): ``label_names``, ``data_config``, ``multi_label`` and
  ``calibration`` (``{"temperature": T}`` or ``{"thresholds": [...]}``, or null) as JSON, and the
  b4transfer version.

The file is then run with onnxruntime on a seeded random batch of another batch size and compared
with the PyTorch fp32 eager model: a largest absolute logit difference above
``atol + rtol * max|logits|`` raises and removes the file. Needs ``onnx`` and ``onnxruntime``
(``pip install "b4transfer[onnx]"``). It uses PyTorch's TorchScript-based exporter
(``dynamo=False``), which needs no ``onnxscript``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from b4transfer.errors import UserError
from b4transfer.export.artifacts import (  # noqa: F401 - require_onnx, claim_onnx_file: also imported from here
    ONNX_NAME,
    check_opset,
    claim_onnx_file,
    onnx_metadata,
    onnx_session,
    require_onnx,
    trace_graph,
    write_onnx,
)
from b4transfer.export.timm_format import flat_data_config, timm_classifier

log = logging.getLogger(__name__)

__all__ = ["ONNX_NAME", "export_onnx", "onnx_metadata", "verify_onnx"]


def export_onnx(
    *,
    backbone: nn.Module,
    head_fc: nn.Linear,
    class_names: list[str],
    data_config: dict,
    out_dir: Path,
    multi_label: bool = False,
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` and check it with onnxruntime.

    Args:
        backbone: The classification trunk from ``create_backbone`` (``num_classes=0``).
        head_fc: The head's linear layer, ``num_features -> len(class_names)``.
        class_names: Label of each logit; stored in the metadata.
        data_config: ``{"train": cfg, "eval": cfg}`` (as ``resolve_data_configs`` gives) or one timm
            data config; the input size is the eval size.
        out_dir: Export directory, created if needed; a ``model.onnx`` there that b4transfer did not
            write is never overwritten.
        multi_label: Independent sigmoid outputs (stored in the metadata).
        opset: ONNX opset version (``None``: ``export.onnx_opset``'s default).
        atol: Absolute tolerance of the onnxruntime check.
        rtol: Tolerance relative to the largest absolute PyTorch logit.
        calibration: ``{"temperature": T}`` (applied in the ``probabilities`` output) or
            ``{"thresholds": [...]}`` (multi-label decisions), stored in the metadata.

    Returns:
        ``{"path", "opset", "input_size", "max_abs_diff", "max_abs_logit", "tolerance"}``.
    """
    opset = check_opset(opset)
    if len(class_names) != head_fc.out_features:
        raise UserError(f"{len(class_names)} class_names for a head with {head_fc.out_features} outputs.")
    flat = flat_data_config(data_config)
    input_size = tuple(flat.get("test_input_size") or flat["input_size"])
    path = Path(out_dir) / ONNX_NAME
    model = timm_classifier(backbone, head_fc)
    graph = WithProbabilities(model, multi_label=multi_label, calibration=calibration)
    metadata = {
        "label_names": list(class_names),
        "data_config": flat,
        "multi_label": bool(multi_label),
        "calibration": calibration or None,
    }
    check = write_onnx(
        path,
        lambda p, opset: trace_graph(
            graph, torch.zeros(1, *input_size), p, opset, input_names=["image"],
            output_names=["logits", "probabilities"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
        ),
        opset=opset,
        metadata=metadata,
        check=lambda p: verify_onnx(p, model, input_size, atol=atol, rtol=rtol),
    )
    report = {"path": str(path), "opset": opset, "input_size": list(input_size), **check}
    log.info("ONNX export %s: onnxruntime vs PyTorch max |diff| %.2e", path, check["max_abs_diff"])
    return report


class WithProbabilities(nn.Module):
    """``image -> (logits, probabilities)``: softmax of ``logits / T`` (or sigmoid when multi-label)."""

    def __init__(self, model: nn.Module, *, multi_label: bool, calibration: dict[str, Any] | None) -> None:
        super().__init__()
        self.model, self.multi_label = model, multi_label
        self.temperature = float((calibration or {}).get("temperature", 1.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        probs = torch.sigmoid(logits) if self.multi_label else (logits / self.temperature).softmax(-1)
        return logits, probs


@torch.no_grad()
def verify_onnx(
    path: Path,
    model: nn.Module,
    input_size: tuple[int, ...],
    *,
    batch: int = 3,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Run ``path`` with onnxruntime and ``model`` in fp32 eager on the same seeded batch.

    Raises:
        RuntimeError: The largest absolute logit difference exceeds ``atol + rtol * max|logits|``.
    """
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    session = onnx_session(path)
    got = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    ref = model.eval()(x)
    diff, scale = float((got - ref).abs().max()), float(ref.abs().max())
    tolerance = atol + rtol * scale
    if not diff <= tolerance:
        raise RuntimeError(
            f"{path}: onnxruntime logits differ from PyTorch by {diff:.3g} (> {tolerance:.3g}). The export "
            "is wrong; report it with your torch/onnx/onnxruntime versions, or use export.format=timm."
        )
    return {"max_abs_diff": diff, "max_abs_logit": scale, "tolerance": tolerance}
