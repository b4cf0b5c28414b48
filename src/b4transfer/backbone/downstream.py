"""The fine-tuned backbone for other frameworks: timm's hub layout, ``features_only``, torchvision.

Every export carries its backbone in ``export/backbone/`` (:func:`export_backbone`): ``config.json``
(timm's hub format: ``architecture``, ``num_classes: 0``, ``pretrained_cfg`` holding the preprocessing)
and ``model.safetensors`` holding exactly the tensors of timm's ``features_only`` model (no classifier,
no ``conv_head``: timm's ``checkpoint_path=`` route trips over those, timm issues #488 and #819). Plain
timm then gives the fine-tuned feature maps, with no b4transfer installed::

    body = timm.create_model("local-dir:outputs/<date>/<time>/export/backbone",
                             pretrained=True, features_only=True, out_indices=(2, 3, 4))

``features_only=True`` is required: the folder holds the feature stages only (the pooled trunk's last
1x1 convolution is not part of them). :func:`load_backbone_dir` is that call; :func:`features_model`
builds the same model from a backbone in memory (a checkpoint's), and :class:`TorchvisionBackbone` wraps
the body for torchvision's detectors (``out_channels``, ``OrderedDict`` outputs, optionally an FPN).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.models import split_model_name_tag
from torch import nn

from b4transfer import __version__
from b4transfer.backbone.features import out_indices_for_strides
from b4transfer.errors import UserError, UserFileNotFoundError

__all__ = ["BACKBONE_DIR", "TorchvisionBackbone", "architecture_of", "default_out_indices", "export_backbone",
           "features_model", "features_state", "find_backbone_dir", "load_backbone_dir"]

BACKBONE_DIR = "backbone"  # the sub-folder of an export
_CONFIG, _WEIGHTS, _MARKER = "config.json", "model.safetensors", "b4transfer_version"


def features_state(backbone: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The tensors of timm's ``features_only`` model of ``name`` (every stage) taken from ``backbone``
    (a pooled trunk or a ``features_only`` model of that architecture), on the CPU."""
    with torch.device("meta"):
        wanted = timm.create_model(split_model_name_tag(name)[0], features_only=True).state_dict()
    state = backbone.state_dict()
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise UserError(
            f"the backbone does not hold every feature stage of {name} (missing {', '.join(missing[:3])}); "
            "it cannot be written as a features_only model. Fix: export a backbone built with all its stages."
        )
    out = {}
    for key, ref in wanted.items():  # FrozenBatchNorm2d (frozen stages) keeps no batch counter
        value = state.get(key, torch.zeros((), dtype=ref.dtype))
        out[key] = value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_backbone(
    backbone: nn.Module,
    out_dir: str | Path,
    *,
    model_name: str,
    data_config: dict,
    task: str | None = None,
    weights_origin: dict | None = None,
) -> Path:
    """Write ``out_dir/config.json`` + ``out_dir/model.safetensors`` in timm's hub layout, loadable with
    ``timm.create_model(f"local-dir:{out_dir}", pretrained=True, features_only=True)``.

    Args:
        backbone: The fine-tuned timm backbone (``module.backbone`` of any task).
        out_dir: The folder (``export/backbone``); an earlier b4transfer backbone there is replaced, other
            files are never overwritten.
        model_name: The timm name it was built with (``efficientnet_b4.ra2_in1k``).
        data_config: Its preprocessing (``{"train": ..., "eval": ...}`` timm data configs, or one).
        task: The task it was fine-tuned for (recorded as ``fine_tuned_for``).
        weights_origin: Where the fine-tuning started (recorded; sets the hub tag only for a hub start).

    Returns:
        ``out_dir``.
    """
    from b4transfer.export.timm_format import atomic_write, claim_dir, flat_data_config, save_hf_config

    out_dir = Path(out_dir)
    state = features_state(backbone, model_name)
    claim_dir(out_dir)
    with torch.device("meta"):
        trunk = timm.create_model(model_name, num_classes=0)
    hub = (weights_origin or {}).get("source") == "hub"
    trunk.pretrained_cfg = {**trunk.pretrained_cfg, "tag": weights_origin.get("tag") if hub else None}
    indices = getattr(getattr(backbone, "feature_info", None), "out_indices", None)
    record = {
        _MARKER: __version__,
        "fine_tuned_for": task,
        "feature_out_indices": list(indices) if indices is not None else None,  # the maps the task used
        "weights_origin": weights_origin,
        "load_with": "timm.create_model('local-dir:<this folder>', pretrained=True, features_only=True)",
    }
    flat = flat_data_config(data_config)
    atomic_write(out_dir / _CONFIG, lambda p: save_hf_config(trunk, p, record, flat))
    atomic_write(out_dir / _WEIGHTS, lambda p: safetensors.torch.save_file(
        state, str(p), metadata={"format": "pt", _MARKER: __version__}))
    return out_dir


def find_backbone_dir(path: str | Path) -> Path | None:
    """The backbone folder of ``path``: itself, ``<export>/backbone`` or ``<run dir>/export/backbone``;
    ``None`` when there is none (a checkpoint, an export written before backbones were)."""
    path = Path(path)
    for candidate in (path, path / BACKBONE_DIR, path / "export" / BACKBONE_DIR):
        config = candidate / _CONFIG
        if config.is_file() and (candidate / _WEIGHTS).is_file():
            try:
                written = json.loads(config.read_text())
            except ValueError:
                continue
            if written.get("num_classes") == 0 and _MARKER in written:
                return candidate
    return None


def load_backbone_dir(path: str | Path, *, out_indices: tuple[int, ...] | None = None) -> nn.Module:
    """The ``features_only`` model of a backbone folder (or an export / run directory holding one), read
    by plain timm's ``local-dir:`` route, in eval mode.

    Raises:
        UserError: ``path`` holds no backbone folder (with the fix).
    """
    found = find_backbone_dir(path) if Path(path).is_dir() else None
    if found is None:
        if not Path(path).exists():
            raise UserFileNotFoundError(f"{path} does not exist; pass an export folder or a run directory.")
        raise UserError(
            f"{path} holds no b4transfer backbone (no {BACKBONE_DIR}/{_CONFIG} with {_WEIGHTS}); exports "
            "written before backbones were have none. Fix: pass the run's checkpoint "
            "(checkpoints/last.ckpt), or re-export it: python run.py mode=export ckpt_path=<checkpoint>."
        )
    kwargs = {"out_indices": tuple(out_indices)} if out_indices is not None else {}
    return timm.create_model(f"local-dir:{found}", pretrained=True, features_only=True, **kwargs).eval()


def features_model(
    backbone: nn.Module, name: str, *, out_indices: tuple[int, ...] | None = None
) -> nn.Module:
    """A new ``features_only`` timm model of ``name`` holding ``backbone``'s weights (eval mode, CPU):
    what :func:`load_backbone_dir` gives for the export of the same backbone."""
    state = features_state(backbone, name)
    kwargs = {"out_indices": tuple(out_indices)} if out_indices is not None else {}
    model = timm.create_model(split_model_name_tag(name)[0], features_only=True, **kwargs)
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    return model.eval()


def architecture_of(path: str | Path) -> str | None:
    """The timm architecture of the backbone folder of ``path``, if it has one."""
    found = find_backbone_dir(path) if Path(path).is_dir() else None
    return str(json.loads((found / _CONFIG).read_text())["architecture"]) if found else None


def default_out_indices(name: str, *, fpn: bool) -> tuple[int, ...]:
    """The stages a detector takes by default: strides 8, 16, 32 for an FPN, else stride 32."""
    return out_indices_for_strides(split_model_name_tag(name)[0], (8, 16, 32) if fpn else (32,))


class TorchvisionBackbone(nn.Module):
    """A timm ``features_only`` body as torchvision's detectors take a backbone: an ``out_channels``
    attribute and ``OrderedDict[str, Tensor]`` outputs.

    With ``fpn=True`` the maps go through torchvision's ``FeaturePyramidNetwork`` (``out_channels``
    wide, plus a max-pooled ``"pool"`` level, as ``resnet_fpn_backbone``): outputs ``"0"``, ``"1"``, ...,
    ``"pool"``. Without, the body's last map alone, as ``"0"`` (``out_channels``: its channels).

    Args:
        body: A ``features_only`` timm model (:func:`load_backbone_dir`, :func:`features_model`).
        fpn: Add the FPN.
        fpn_channels: The FPN's width.

    Attributes:
        out_channels: Channels of every output map.
        featmap_names: The output names to pool RoIs from (``MultiScaleRoIAlign(featmap_names, ...)``).
        strides: Each output's stride relative to the input.
    """

    def __init__(self, body: nn.Module, *, fpn: bool = True, fpn_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = body
        channels, strides = list(body.feature_info.channels()), list(body.feature_info.reduction())
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels, LastLevelMaxPool()) if fpn else None
        self.out_channels = fpn_channels if fpn else channels[-1]
        self.featmap_names = [str(i) for i in range(len(channels))] if fpn else ["0"]
        self.strides = [*strides, strides[-1] * 2] if fpn else strides[-1:]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x)
        if self.fpn is None:
            return OrderedDict([("0", maps[-1])])
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
