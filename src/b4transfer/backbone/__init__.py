"""The backbone: the one place that calls ``timm.create_model``.

``create_backbone`` builds a timm EfficientNet (``efficientnet_b4.ra2_in1k`` by default) either as a
classification trunk (``forward`` gives pooled ``(N, num_features)`` features, no classifier) or as a
``features_only`` pyramid (``feature_info`` describes the maps). Pretrained weights come, in order of
preference, from a local file (``weights=PATH``), from the local Hugging Face cache, or from the hub when
it answers within ``hub_timeout`` seconds. With none of those it fails at once with
:class:`PretrainedWeightsUnavailable` naming the ways out; it never falls back to random weights.

``resolve_data_configs`` gives the train and eval timm data configs (B4: 320 / crop 0.875 to train,
384 / crop 1.0 to evaluate, as on the model card).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from b4transfer.backbone.builder import DEFAULT_NAME, build_model, check_name, check_out_indices, check_rate
from b4transfer.backbone.data_config import canvas_data_config, resolve_data_configs
from b4transfer.backbone.features import feature_channels, feature_reductions, out_indices_for_strides
from b4transfer.backbone.weights import (
    PretrainedWeightsUnavailable,
    build_pretrained,
    check_weights_file,
    hf_cache_dir,
    load_weights_file,
    locate_pretrained,
)
from b4transfer.errors import UserError
from b4transfer.settings.model import ModelSettings

__all__ = [
    "DEFAULT_NAME",
    "build_backbone",
    "canvas_data_config",
    "PretrainedWeightsUnavailable",
    "check_weights",
    "create_backbone",
    "feature_channels",
    "feature_reductions",
    "hf_cache_dir",
    "out_indices_for_strides",
    "resolve_data_configs",
]


def create_backbone(
    name: str = DEFAULT_NAME,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    hub_timeout: float = 3.0,
) -> nn.Module:
    """Build a timm backbone, with weights from a file, the local cache, the hub, or random init.

    Args:
        name: timm model name, optionally with a pretrained tag (``efficientnet_b4.ra2_in1k``).
            Any timm EfficientNet-family model works (``efficientnet_b0``, ``tf_efficientnet_lite0``, ...).
        pretrained: Load the pretrained weights of ``name`` (cache first, then the hub).
        weights: Path to a local ``.safetensors``/``.pth``/``.pt``/``.bin``/``.ckpt`` state dict in timm
            layout (classifier keys optional). Overrides ``pretrained``; never touches the network.
        features_only: Build the multi-scale feature extractor (keeps ``feature_info``) instead of the
            pooled classification trunk (``forward`` -> ``(N, num_features)``).
        out_indices: Feature stages to return; only with ``features_only`` (timm default: all).
        drop_rate: Dropout before the (absent) classifier, as timm's ``drop_rate``.
        drop_path_rate: Stochastic depth rate.
        hub_timeout: Hard limit in seconds for checking that the hub answers before downloading.

    Returns:
        The timm model, in train mode.

    Raises:
        PretrainedWeightsUnavailable: ``pretrained=True`` but the weights are not cached and the hub
            cannot be reached (or ``HF_HUB_OFFLINE`` is set).
        FileNotFoundError: ``weights`` does not exist.
        ValueError: Unknown ``name``, bad argument, or a weights file that does not fit the model.
    """
    check_name(name)
    check_rate("model.drop_rate", drop_rate)
    check_rate("model.drop_path_rate", drop_path_rate)
    if not isinstance(hub_timeout, numbers.Real) or hub_timeout <= 0:
        raise UserError(f"model.hub_timeout must be a positive number of seconds, got {hub_timeout!r}.")
    kwargs = {"drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    if features_only:
        kwargs.update(features_only=True, out_indices=check_out_indices(out_indices))
    elif out_indices is not None:
        raise UserError(
            f"model.out_indices={out_indices!r} only applies with features_only=True; "
            "set model.features_only=true or model.out_indices=null."
        )
    else:
        kwargs["num_classes"] = 0  # pooled pre-logits features, no classifier
    if weights is not None:
        model = build_model(name, kwargs)
        load_weights_file(model, Path(weights), name=name, features_only=features_only)
        return model
    if not pretrained:
        return build_model(name, kwargs)
    return build_pretrained(name, kwargs, float(hub_timeout))


def check_weights(model: Mapping[str, Any]) -> None:
    """Fail now, before any data is read or generated, when the weights that ``model`` (``cfg.model``)
    asks for cannot be had: a ``weights`` file that is not there, or pretrained weights neither cached
    nor downloadable (:class:`PretrainedWeightsUnavailable`, within ``hub_timeout`` s). Loads nothing.
    """
    if model.get("weights") is not None:
        check_weights_file(Path(model["weights"]))
    elif model.get("pretrained", False):
        check_name(model["name"])
        locate_pretrained(model["name"], float(model.get("hub_timeout") or 3.0))


def build_backbone(
    model: ModelSettings | Mapping[str, Any], strides: Sequence[int] | None = None
) -> nn.Module:
    """The timm backbone ``model`` describes (``cfg.model``, typed or a plain mapping: ``name``,
    ``pretrained``, ``weights``, ``drop_path_rate``; one not given is off): pooled features
    (``strides=None``, classification) or, ``features_only``, the feature maps at ``strides`` (dense
    tasks, e.g. detection)."""
    if not isinstance(model, ModelSettings):
        model = ModelSettings.of(model, key="model", fill=False)
    maps = {} if strides is None else {
        "features_only": True, "out_indices": out_indices_for_strides(model.name, list(strides))
    }
    return create_backbone(
        model.name,
        pretrained=bool(model.pretrained),
        weights=model.weights,
        drop_path_rate=model.drop_path_rate or 0.0,
        **maps,
    )
