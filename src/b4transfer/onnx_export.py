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

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from b4transfer import __version__
from b4transfer.errors import MissingDependencyError, UserError, UserFileExistsError
from b4transfer.export import MARKER, atomic_write, flat_data_config, timm_classifier

log = logging.getLogger(__name__)

__all__ = ["ONNX_NAME", "export_onnx", "onnx_metadata", "verify_onnx"]

ONNX_NAME = "model.onnx"


def require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(
            f"export.format=onnx needs the onnx and onnxruntime packages ({e}). Fix: "
            'pip install "b4transfer[onnx]" (or pip install onnx onnxruntime).'
        ) from e
    return onnx, onnxruntime


def export_onnx(
    *,
    backbone: nn.Module,
    head_fc: nn.Linear,
    class_names: list[str],
    data_config: dict,
    out_dir: Path,
    multi_label: bool = False,
    opset: int = 17,
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
        opset: ONNX opset version.
        atol: Absolute tolerance of the onnxruntime check.
        rtol: Tolerance relative to the largest absolute PyTorch logit.
        calibration: ``{"temperature": T}`` (applied in the ``probabilities`` output) or
            ``{"thresholds": [...]}`` (multi-label decisions), stored in the metadata.

    Returns:
        ``{"path", "opset", "input_size", "max_abs_diff", "max_abs_logit", "tolerance"}``.
    """
    onnx, _ = require_onnx()
    if not isinstance(opset, int) or isinstance(opset, bool) or not 11 <= opset <= 21:
        raise UserError(f"export.onnx_opset must be an integer opset in 11..21, got {opset!r}.")
    if len(class_names) != head_fc.out_features:
        raise UserError(f"{len(class_names)} class_names for a head with {head_fc.out_features} outputs.")
    flat = flat_data_config(data_config)
    input_size = tuple(flat.get("test_input_size") or flat["input_size"])
    out_dir = Path(out_dir)
    path = out_dir / ONNX_NAME
    claim_onnx_file(path, onnx)
    model = timm_classifier(backbone, head_fc)
    dummy = torch.zeros(1, *input_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter's notice
        graph = WithProbabilities(model, multi_label=multi_label, calibration=calibration)
        atomic_write(path, lambda p: _export(graph, dummy, p, opset))
    proto = onnx.load(str(path))
    metadata = {
        "label_names": json.dumps(list(class_names)),
        "data_config": json.dumps(flat),
        "multi_label": json.dumps(bool(multi_label)),
        "calibration": json.dumps(calibration or None),
        MARKER: __version__,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write(path, lambda p: onnx.save(proto, str(p)))
    try:
        check = verify_onnx(path, model, input_size, atol=atol, rtol=rtol)
    except Exception:
        path.unlink(missing_ok=True)
        raise
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


def _export(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["image"],
        output_names=["logits", "probabilities"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
    )


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
    _, ort = require_onnx()
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :func:`export_onnx` stored, JSON values decoded."""
    onnx, _ = require_onnx()
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {k: v if k == MARKER else json.loads(v) for k, v in props.items()}


def claim_onnx_file(path: Path, onnx) -> None:
    if path.parent.exists() and not path.parent.is_dir():
        raise UserFileExistsError(f"export out_dir {path.parent} is a file; choose a directory path.")
    if path.exists():
        try:
            props = onnx.load(str(path), load_external_data=False).metadata_props
            ours = any(p.key == MARKER for p in props)
        except Exception:
            ours = False
        if not ours:
            raise UserFileExistsError(
                f"{path} exists and was not written by b4transfer; refusing to overwrite it. Choose another "
                "out_dir or move the file away."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
