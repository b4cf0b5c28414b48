"""Data configs from the model's pretrained config: train (B4: 320, crop 0.875) and eval (384, crop 1.0,
as on the model card), each field overridable."""

from __future__ import annotations

import numbers

from timm.data import resolve_model_data_config
from torch import nn

from b4transfer.errors import UserError

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def resolve_data_configs(
    model: nn.Module,
    *,
    image_size: int | None = None,
    eval_image_size: int | None = None,
    crop_pct: float | None = None,
    eval_crop_pct: float | None = None,
    interpolation: str | None = None,
    mean=None,
    std=None,
) -> tuple[dict, dict]:
    """Train and eval timm data configs for ``model``, each field overridable.

    Train is ``resolve_model_data_config(model)`` (B4: 320, crop 0.875); eval uses the model's test size
    (B4: 384, crop 1.0). When only ``image_size`` is given, the eval size follows by the model's own
    test/train ratio (B4: 160 -> 192).

    Args:
        model: A timm model from :func:`create_backbone` (classification or ``features_only``).
        image_size: Square train input size.
        eval_image_size: Square eval input size (wins over the ratio rule).
        crop_pct: Train centre-crop fraction in (0, 1].
        eval_crop_pct: Eval centre-crop fraction in (0, 1].
        interpolation: Resize interpolation for both (``bicubic``, ``bilinear``, ...).
        mean: Per-channel normalisation mean for both.
        std: Per-channel normalisation std for both.

    Returns:
        ``(train_cfg, eval_cfg)`` dicts with ``input_size``, ``interpolation``, ``mean``, ``std``,
        ``crop_pct``, ``crop_mode``.
    """
    if not isinstance(getattr(model, "pretrained_cfg", None), dict):
        raise TypeError(f"{type(model).__name__} has no timm pretrained_cfg; pass a create_backbone model.")
    train = dict(resolve_model_data_config(model))
    evaluation = dict(resolve_model_data_config(model, use_test_size=True))
    chans = train["input_size"][0]
    ratio = evaluation["input_size"][-2] / train["input_size"][-2]  # B4: 384 / 320
    if image_size is not None:
        size = _size("data.image_size", image_size)
        train["input_size"] = (chans, size, size)
        evaluation["input_size"] = (chans, round(size * ratio), round(size * ratio))
    if eval_image_size is not None:
        size = _size("data.eval_image_size", eval_image_size)
        evaluation["input_size"] = (chans, size, size)
    crops = (("data.crop_pct", crop_pct, train), ("data.eval_crop_pct", eval_crop_pct, evaluation))
    for key, value, cfg in crops:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
                raise UserError(f"{key} must be a fraction in (0, 1], e.g. 0.875 or 1.0, got {value!r}.")
            cfg["crop_pct"] = float(value)
    if interpolation is not None:
        if interpolation not in _INTERPOLATIONS:
            options = ", ".join(_INTERPOLATIONS)
            raise UserError(f"data.interpolation={interpolation!r} is not supported; use one of {options}.")
        train["interpolation"] = evaluation["interpolation"] = interpolation
    for key, value, positive in (("mean", mean, False), ("std", std, True)):
        if value is not None:
            train[key] = evaluation[key] = _channels(f"data.{key}", value, chans, positive)
    return train, evaluation


def _size(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise UserError(f"{key} must be a positive integer number of pixels (e.g. 320), got {value!r}.")
    return int(value)


def _channels(key: str, value, chans: int, positive: bool) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else ()
    ok = len(values) == chans and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
    if not ok or (positive and any(v <= 0 for v in values)):
        need = "positive " if positive else ""
        raise UserError(f"{key} must be {chans} {need}numbers, one per input channel, got {value!r}.")
    return tuple(float(v) for v in values)


def canvas_data_config(backbone: nn.Module, data: dict | None) -> dict[str, dict]:
    """``{"train": ..., "eval": ...}`` timm data configs of a dense task (e.g. detection): one
    square canvas side for train and eval (``data.image_size``, else the model's test size), and
    ``data.mean`` / ``data.std`` if set."""
    data = dict(data or {})
    size = data.get("image_size")
    train_cfg, eval_cfg = resolve_data_configs(
        backbone, image_size=size, eval_image_size=size, mean=data.get("mean"), std=data.get("std")
    )
    if size is None:
        train_cfg["input_size"] = eval_cfg["input_size"]
    return {"train": train_cfg, "eval": eval_cfg}
