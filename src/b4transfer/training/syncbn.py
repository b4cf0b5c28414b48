"""Synchronised BatchNorm that keeps timm's fused activation.

``Trainer(sync_batchnorm=True)`` converts layers with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``.
timm's ``BatchNormAct2d`` (every norm of an EfficientNet) is BatchNorm *plus* an activation in one
module; torch's converter turns it into a plain ``SyncBatchNorm`` whose forward never calls the
activation, so every SiLU of B4 silently disappears. :class:`TimmSyncBatchNorm` is a Lightning
``LayerSync`` plugin that converts with ``timm.layers.convert_sync_batchnorm`` instead (``SyncBatchNormAct``
keeps ``act`` and ``drop``) and reverts to ``BatchNormAct2d`` after training.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins import LayerSync
from lightning.pytorch.plugins.layer_sync import _BatchNormXd
from timm.layers import BatchNormAct2d, SyncBatchNormAct, convert_sync_batchnorm
from torch import nn


def _copy_state(src: nn.modules.batchnorm._BatchNorm, dst: nn.modules.batchnorm._BatchNorm) -> None:
    if src.affine:
        with torch.no_grad():
            dst.weight = src.weight
            dst.bias = src.bias
    dst.running_mean = src.running_mean
    dst.running_var = src.running_var
    dst.num_batches_tracked = src.num_batches_tracked
    dst.training = src.training


def _to_batchnorm_act(layer: SyncBatchNormAct) -> BatchNormAct2d:
    out = BatchNormAct2d(
        layer.num_features,
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        track_running_stats=layer.track_running_stats,
        apply_act=False,
    )
    _copy_state(layer, out)
    # act / drop are the original modules, re-attached below as children
    return out


class TimmSyncBatchNorm(LayerSync):
    """Lightning ``LayerSync`` plugin: timm's SyncBN converter (activation kept), and its inverse.

    Pass it in ``Trainer(plugins=[TimmSyncBatchNorm()])`` with ``sync_batchnorm=False``; b4transfer does
    so for ``trainer.sync_batchnorm=true``. Like Lightning's plugin it only acts under a multi-process
    strategy (DDP / FSDP), where Lightning calls :meth:`apply` before training and :meth:`revert` after.

    Args:
        process_group: Synchronise within this group only (default: all ranks).
    """

    def __init__(self, process_group=None) -> None:
        self.process_group = process_group

    def apply(self, model: nn.Module) -> nn.Module:
        """``BatchNormAct2d`` -> ``SyncBatchNormAct`` (act/drop kept); other BNs -> ``SyncBatchNorm``."""
        return convert_sync_batchnorm(model, self.process_group)

    def revert(self, model: nn.Module) -> nn.Module:
        """``SyncBatchNormAct`` -> ``BatchNormAct2d``; plain ``SyncBatchNorm`` as Lightning reverts it."""
        if isinstance(model, SyncBatchNormAct):
            out = _to_batchnorm_act(model)
        elif isinstance(model, nn.SyncBatchNorm):
            out = _BatchNormXd(
                model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats
            )
            _copy_state(model, out)
        else:
            out = model
        for name, child in model.named_children():
            out.add_module(name, self.revert(child))
        return out
