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

import json
import warnings
from pathlib import Path

import safetensors.torch
import torch

from b4transfer import __version__
from b4transfer.backbone import create_backbone
from b4transfer.data.detection_datamodule import fill_colour
from b4transfer.data.mask_datamodule import MaskPathDataset
from b4transfer.errors import UserError, UserFileNotFoundError
from b4transfer.export import CONFIG_NAME, MARKER, WEIGHTS_NAME, atomic_write, check_extra, claim_dir
from b4transfer.onnx_export import ONNX_NAME, claim_onnx_file, require_onnx
from b4transfer.tasks.segmentation.head import SegmentationHead, Segmenter, check_head

__all__ = ["export_segmenter", "export_segmenter_onnx", "load_exported_segmenter"]

MIN_PIXEL_AGREEMENT = 0.999
CHECK_IMAGES = 4


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
    out_dir = Path(out_dir)
    claim_dir(out_dir)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.segmenter().state_dict().items()}
    config = {**segmenter_config(module), MARKER: __version__, **extras}
    atomic_write(out_dir / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    atomic_write(
        out_dir / WEIGHTS_NAME,
        lambda p: safetensors.torch.save_file(state, str(p), metadata={"format": "pt", MARKER: __version__}),
    )
    return out_dir


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
    out_dir = Path(out_dir)
    config_path, weights = out_dir / CONFIG_NAME, out_dir / WEIGHTS_NAME
    for path in (config_path, weights):
        if not path.is_file():
            raise UserFileNotFoundError(
                f"{path} does not exist; pass the directory export_segmenter wrote "
                f"(it holds {WEIGHTS_NAME} and {CONFIG_NAME})."
            )
    config = json.loads(config_path.read_text())
    if "ignore_index" not in config or "head" not in config:
        raise UserError(f"{config_path} is not a semantic-mask export (task={config.get('task')!r}).")
    return rebuild_segmenter(config, safetensors.torch.load_file(str(weights), device="cpu")), config


def export_segmenter_onnx(module, out_dir: str | Path, *, opset: int = 17, check_images=None) -> dict:
    """Write ``out_dir/model.onnx`` and check its argmax against PyTorch on the first
    :data:`CHECK_IMAGES` of ``check_images`` (canvases as prediction makes them), else seeded noise."""
    onnx, ort = require_onnx()
    if not isinstance(opset, int) or isinstance(opset, bool) or not 11 <= opset <= 21:
        raise UserError(f"export.onnx_opset must be an integer opset in 11..21, got {opset!r}.")
    model, size = standalone_segmenter(module), module.image_size
    path = Path(out_dir) / ONNX_NAME
    claim_onnx_file(path, onnx)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        atomic_write(
            path,
            lambda p: torch.onnx.export(
                model,
                (torch.zeros(1, 3, size, size),),
                str(p),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            ),
        )
    proto = onnx.load(str(path))
    for key, value in {"config": json.dumps(segmenter_config(module)), MARKER: __version__}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write(path, lambda p: onnx.save(proto, str(p)))
    try:
        check = check_onnx_agreement(path, model, _check_canvases(module, check_images), ort)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return {"path": str(path), "opset": opset, "input_size": [3, size, size], "check": check}


@torch.no_grad()
def check_onnx_agreement(path: Path, model: Segmenter, canvases: torch.Tensor, ort) -> dict:
    """Argmax agreement of onnxruntime with PyTorch fp32 eager; below 99.9 % raises."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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


def _check_canvases(module, paths) -> torch.Tensor:
    size = module.image_size
    if not paths:
        return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    dataset = MaskPathDataset(
        paths[:CHECK_IMAGES], size, fill_colour(module.data_config["eval"]["mean"]), module.resize
    )
    return torch.stack([dataset[i][0] for i in range(len(dataset))])
