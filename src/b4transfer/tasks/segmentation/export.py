"""Export a fine-tuned segmentation model as plain weights + config, and as ONNX; load it back with no
Lightning.

``export_segmenter`` writes ``model.safetensors`` — the state dict of the standalone
:class:`~b4transfer.tasks.segmentation.head.Segmenter` (``encoder.*``: the timm ``features_only`` model,
``head.*``: decoder and classifier) — and ``config.json`` with everything needed to rebuild it (timm name,
``out_indices``, head settings, canvas size, mean/std, class names, palette, ignore index)::

    from b4transfer.tasks.segmentation.export import load_exported_segmenter
    model, config = load_exported_segmenter("export")
    logits = model(images)          # (N, 3, H, W) floats in 0..1 -> (N, K, H, W); H, W multiples of 32

``export.format=onnx`` writes ``model.onnx`` (input ``image``: ``(N, 3, S, S)`` in 0..1 with ``S`` the
canvas size, output ``logits`` ``(N, K, S, S)``) and runs it with onnxruntime against PyTorch: the
argmax classes must agree on at least 99.9 % of the pixels of the check images, or the file is removed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from b4transfer.backbone import create_backbone
from b4transfer.data.loaders import fill_colour
from b4transfer.export.artifacts import (
    ONNX_NAME,
    check_inputs,
    check_opset,
    onnx_session,
    read_export,
    trace_graph,
    write_export,
    write_onnx,
)
from b4transfer.export.timm_format import check_extra
from b4transfer.tasks.segmentation.data.datamodule import MaskPathDataset
from b4transfer.tasks.segmentation.head import SegmentationHead, Segmenter, check_head

__all__ = ["export_segmenter", "export_segmenter_onnx", "load_exported_segmenter"]

MIN_PIXEL_AGREEMENT = 0.999


def segmenter_config(module) -> dict:
    """Everything needed to rebuild the standalone model (the export's ``config.json``)."""
    cfg = module.data_config["eval"]
    return {
        "task": module.task_name,
        "architecture": module.hparams.model["name"],
        "out_indices": list(module.backbone.feature_info.out_indices),
        "head": check_head(module.hparams.get("head")),
        "image_size": module.image_size,
        "resize": module.resize,
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "class_names": list(module.class_names),
        "palette": [list(c) for c in module.palette],
        "ignore_index": module.ignore_index,
        "weights_origin": module.hparams.get("weights_origin"),  # where fine-tuning started
    }


def standalone_segmenter(module) -> Segmenter:
    """A CPU, eval-mode :class:`Segmenter` holding a copy of ``module``'s weights."""
    config = segmenter_config(module)
    state = {k: v.detach().cpu().clone() for k, v in module.segmenter().state_dict().items()}
    return rebuild_segmenter(config, state)


def export_segmenter(module, out_dir: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` + ``out_dir/config.json``; files b4transfer did not write are
    never overwritten."""
    extras = check_extra(extra)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.segmenter().state_dict().items()}
    return write_export(out_dir, state, {**segmenter_config(module), **extras})


def rebuild_segmenter(config: dict, state: dict) -> Segmenter:
    """The :class:`Segmenter` an export ``config`` describes, filled strictly from ``state``."""
    encoder = create_backbone(
        config["architecture"], pretrained=False, features_only=True, out_indices=tuple(config["out_indices"])
    )
    info = encoder.feature_info
    head = SegmentationHead(info.channels(), info.reduction(), len(config["class_names"]), **config["head"])
    model = Segmenter(encoder, head, config["mean"], config["std"])
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_exported_segmenter(out_dir: str | Path) -> tuple[Segmenter, dict]:
    """Rebuild an export (eval mode, CPU) and return it with its ``config.json``."""
    config, state = read_export(out_dir, writer="export_segmenter", refusal=_not_masks)
    return rebuild_segmenter(config, state), config


def _not_masks(config: dict, path: Path) -> str | None:
    if "ignore_index" not in config or "head" not in config:
        return f"{path} is not a semantic-mask export (task={config.get('task')!r})."
    return None


def export_segmenter_onnx(
    module, out_dir: str | Path, *, opset: int | None = None, check_images=None
) -> dict:
    """Write ``out_dir/model.onnx`` and check its argmax against PyTorch on the first
    :data:`~b4transfer.export.artifacts.CHECK_IMAGES` of ``check_images`` (canvases as prediction makes them),
    else seeded noise. ``opset``: ``None``, ``export.onnx_opset``'s default."""
    opset = check_opset(opset)
    model, size = standalone_segmenter(module), module.image_size
    fill = fill_colour(module.data_config["eval"]["mean"])
    canvases = check_inputs(
        size, check_images, lambda paths: MaskPathDataset(paths, size, fill, module.resize)
    )

    def write_graph(p: Path, opset: int) -> None:
        trace_graph(
            model, torch.zeros(1, 3, size, size), p, opset, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )

    path = Path(out_dir) / ONNX_NAME
    check = write_onnx(
        path, write_graph, opset=opset, metadata={"config": segmenter_config(module)},
        check=lambda p: check_onnx_agreement(p, model, canvases),
    )
    return {"path": str(path), "opset": opset, "input_size": [3, size, size], "check": check}


@torch.no_grad()
def check_onnx_agreement(path: Path, model: Segmenter, canvases: torch.Tensor) -> dict:
    """Argmax agreement of onnxruntime with PyTorch fp32 eager; below 99.9 % raises."""
    session = onnx_session(path)
    got = torch.from_numpy(session.run(["logits"], {"image": canvases.numpy()})[0])
    ref = model(canvases)
    agreement = float((got.argmax(1) == ref.argmax(1)).float().mean())
    diff = float((got - ref).abs().max())
    if agreement < MIN_PIXEL_AGREEMENT:
        raise RuntimeError(
            f"{path}: onnxruntime's classes agree with PyTorch on only {100 * agreement:.3f}% of "
            f"the pixels (max |logit diff| {diff:.3g}); the export is wrong. Use export.format=timm."
        )
    return {"images": len(canvases), "pixel_agreement": agreement, "max_abs_diff": diff}
