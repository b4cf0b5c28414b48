"""Class activation maps of a classifier (``predict.explain=true`` and the maps of ``errors.png``).

The map is drawn on the output of the backbone stage at ``predict.explain_stride`` (timm's
``feature_info``; 16 by default: 24 x 24 for B4 at 384 px), the gradient of the class's logit flowing
back to it through the later stages, the pooling and the head. Images are read with the evaluation
transform, so the overlay shows the resized, cropped view the model saw; maps run in fp32 eager, no TTA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from b4transfer.data.dataset import PathDataset
from b4transfer.data.images import load_rgb
from b4transfer.data.transforms import build_transforms
from b4transfer.errors import UserError
from b4transfer.explain import DEFAULT_METHOD, activation_map, check_method, input_view, overlay
from b4transfer.runtime.inference import output_names

log = logging.getLogger(__name__)

DEFAULT_STRIDE = 16  # the measured default (b4transfer.explain.cam); conf/config.yaml predict.explain_stride

__all__ = [
    "check_explainable",
    "class_maps",
    "eval_transform",
    "explain_predictions",
    "explain_settings",
    "feature_module",
    "map_views",
    "write_overlays",
]


def eval_transform(module):
    """The evaluation transform of ``module`` (resize, centre crop, normalise)."""
    return build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])[1]


def feature_module(module, stride: int) -> torch.nn.Module:
    """The backbone stage whose output has ``stride`` (from timm's ``feature_info``)."""
    info = getattr(module.backbone, "feature_info", None) or []
    entries = list(getattr(info, "info", info))
    strides = sorted({int(f["reduction"]) for f in entries})
    match = [f["module"] for f in entries if int(f["reduction"]) == stride]
    if not match:
        raise UserError(
            f"predict.explain_stride={stride}: model {module.hparams.model['name']} has feature maps at "
            f"strides {strides or 'none'}. Fix: set predict.explain_stride to one of them."
        )
    return module.backbone.get_submodule(match[-1])


def check_explainable(module, stride: int) -> None:
    """Refuse, before predicting, a stride the backbone lacks or a stage whose output is not a
    ``(N, C, h, w)`` map (e.g. a ViT's tokens)."""
    size = module.data_config["eval"]["input_size"]
    shape = {}
    stage = feature_module(module, stride)
    hook = stage.register_forward_hook(lambda _m, _i, out: shape.update(o=tuple(out.shape)))
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module.backbone(torch.zeros(1, *size))
    finally:
        hook.remove()
        module.train(was_training)
    if len(shape.get("o", ())) != 4:
        raise UserError(
            f"predict.explain=true needs a convolutional feature map, but model "
            f"{module.hparams.model['name']} gives {shape.get('o')} at stride {stride}. Fix: set "
            "predict.explain=false for this model."
        )


def class_maps(
    module, x: torch.Tensor, classes: torch.Tensor | None = None, *, method: str, stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps ``(N, h, w)`` in 0..1 (``h = H / stride``) for ``classes`` (default: each image's top class) of
    images ``x``, with the classes and their probabilities."""
    store = {}

    def leaf(_module, _inputs, output):  # the map as a leaf: the gradient stops there
        store["features"] = output.detach().float().requires_grad_(True)
        return store["features"].to(output.dtype)

    module.eval()
    hook = feature_module(module, stride).register_forward_hook(leaf)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = module.head(module.backbone(x.float())).float()
            if classes is None:
                classes = logits.argmax(-1)
            classes = torch.as_tensor(classes, device=logits.device).long()
            (grads,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), store["features"])
    finally:
        hook.remove()
    probs = module.head.probabilities(logits.detach()).gather(1, classes[:, None])[:, 0]
    return activation_map(store["features"].detach(), grads, method), classes, probs


def map_views(
    module, paths: Sequence[Path], classes: torch.Tensor, *, method: str, stride: int, device: str = "cpu"
) -> list:
    """Each image's evaluation view ``(H, W, 3)`` uint8 with the map of ``classes[i]`` drawn over it (the
    images alone when the backbone has no such map, e.g. a ViT)."""
    try:
        check_explainable(module, stride)
    except UserError as err:
        log.warning("No class activation maps: %s", err)
        return list(paths)
    module.to(device)
    transform, eval_cfg = eval_transform(module), module.data_config["eval"]
    x = torch.stack([transform(load_rgb(p)) for p in paths]) if paths else torch.zeros(0)
    views = []
    for chunk, cls in zip(x.split(16), torch.as_tensor(classes).split(16)):
        maps, _, _ = class_maps(module, chunk.to(device), cls.to(device), method=method, stride=stride)
        views += [overlay(input_view(v, eval_cfg["mean"], eval_cfg["std"]), m) for v, m in zip(chunk, maps)]
    module.cpu()
    return views


def _label(pixels, text: str) -> Image.Image:
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((2, 2), text)
    draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((2, 2), text, fill=(255, 255, 255))
    return image


def write_overlays(
    module,
    paths: Sequence[Path],
    names: Sequence[Path],
    out_dir: Path,
    *,
    method: str,
    stride: int,
    batch_size: int = 16,
    device: str = "cpu",
) -> list[Path]:
    """Write ``out_dir/<name>``: each image's evaluation view with the map of its top class drawn over it,
    labelled with the class and its probability. Returns the files written."""
    loader = DataLoader(PathDataset(paths, transform=eval_transform(module)), batch_size=batch_size)
    eval_cfg = module.data_config["eval"]
    module.to(device)
    written = []
    for x, index in loader:
        maps, classes, probs = class_maps(module, x.to(device), method=method, stride=stride)
        for image, i, cam, c, p in zip(x, index.tolist(), maps.cpu(), classes.tolist(), probs.tolist()):
            view = input_view(image, eval_cfg["mean"], eval_cfg["std"])
            out = out_dir / names[i]
            out.parent.mkdir(parents=True, exist_ok=True)
            _label(overlay(view, cam), f"{module.class_names[c]} {p:.2f} ({method})").save(out)
            written.append(out)
    log.info("Wrote %d class activation maps (%s) to %s", len(written), method, out_dir)
    return written


def explain_settings(predict) -> dict | None:
    """``{"method", "stride"}`` from the ``predict`` config when ``predict.explain`` is on, else ``None``;
    bad values are refused naming the key."""
    predict = predict or {}
    on = predict.get("explain", False)
    if not isinstance(on, bool):
        raise UserError(f"predict.explain must be true or false, got {on!r}.")
    method = check_method(predict.get("explain_method") or DEFAULT_METHOD)
    stride = predict.get("explain_stride", DEFAULT_STRIDE)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise UserError(
            f"predict.explain_stride must be a backbone stride such as 8, 16 or 32, got {stride!r}."
        )
    return {"method": method, "stride": stride} if on else None


def explain_predictions(cfg, module, paths: Sequence[Path], run_dir: Path, *, device: str) -> dict:
    """``predict.explain=true``: ``run_dir/explain/<image>.png`` per input (names as
    :func:`b4transfer.runtime.inference.output_names`); the summary entries."""
    settings = explain_settings(cfg.predict)
    names = output_names(list(paths), cfg.predict.get("input"), ".png")
    batch = int(cfg.predict.get("batch_size") or cfg.data.batch_size)
    out_dir = run_dir / "explain"
    written = write_overlays(module, paths, names, out_dir, batch_size=batch, device=device, **settings)
    return {"dir": str(out_dir), "images": len(written), **settings}
