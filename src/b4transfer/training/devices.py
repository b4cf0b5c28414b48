"""Precision, strategy and batch-size plumbing between the Hydra config and ``lightning.Trainer``.

- ``precision=`` (group) sets ``trainer.precision``; Lightning itself turns ``16-mixed`` on a CPU into
  ``bf16-mixed`` with one warning (fp16 autocast needs a GPU) and adds the GradScaler on GPUs.
  ``precision=auto`` is resolved here (:func:`resolve_precision`): ``bf16-mixed`` plus channels_last
  weights and inputs where the training device computes bf16 natively (CPUs with AVX512-BF16 / AMX,
  GPUs with bf16), else ``32-true`` -- the same detection as ``predict.precision=auto``.
- ``strategy=`` (group) is built into a Lightning strategy object here: ``auto``, ``ddp``,
  ``ddp_spawn``, ``fsdp`` (wrapping each EfficientNet block, classes named in the config).
- ``trainer.sync_batchnorm=true`` is taken over: Lightning's converter would drop timm's fused
  activations, so :class:`~b4transfer.training.syncbn.TimmSyncBatchNorm` goes in as a plugin instead.
- :func:`batch_plan` states per-device vs global batch size and applies ``optim.lr_scaling``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from b4transfer.errors import UserError
from b4transfer.runtime import inference
from b4transfer.training.checkpointing import AtomicCheckpointIO
from b4transfer.training.distributed import is_rank_zero
from b4transfer.training.syncbn import TimmSyncBatchNorm

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
LR_RULES = ("none", "linear", "sqrt")
LR_SCALING_KEYS = ("lr_scaling", "base_batch_size")


@dataclass(frozen=True)
class PrecisionPlan:
    """What ``trainer.precision`` resolved to: the Lightning precision used, channels_last or not, and
    whether depthwise convolutions stay fp32 under bf16 autocast
    (:func:`b4transfer.runtime.speed.fp32_depthwise`:
    on CPUs oneDNN's bf16 depthwise backward is 2x slower than fp32's)."""

    requested: str
    used: str
    channels_last: bool
    reason: str
    fp32_depthwise: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_device(accelerator: Any) -> torch.device:
    """The device type a Trainer with ``accelerator`` trains on (``auto``: a CUDA GPU if there is one)."""
    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if name == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(trainer_cfg: Mapping[str, Any], *, announce: bool = False) -> PrecisionPlan:
    """``trainer.precision``, with ``auto`` resolved for the device ``trainer.accelerator`` trains on.

    ``auto``: ``bf16-mixed`` + channels_last where the device runs bf16 natively
    (:func:`b4transfer.runtime.inference.bf16_native`: CPUs with AVX512-BF16 / AMX, GPUs with bf16 support);
    elsewhere ``32-true`` in the default layout (emulated bf16 is slower than fp32). Other values pass
    through unchanged (channels_last then follows ``model.channels_last`` alone). ``announce``: log
    what ``auto`` chose and why (once per run: ``mode=train`` asks with it).
    """
    plan = _resolve_precision(trainer_cfg)
    if announce and plan.requested.lower() == "auto" and is_rank_zero():
        layout = " + channels_last" if plan.channels_last else ""
        log.info("precision=auto: %s%s (%s)", plan.used, layout, plan.reason)
    return plan


def _resolve_precision(trainer_cfg: Mapping[str, Any]) -> PrecisionPlan:
    requested = str(trainer_cfg.get("precision", "32-true"))
    device = training_device(trainer_cfg.get("accelerator"))
    if requested.lower() != "auto":
        # bf16 autocast on a CPU (16-mixed turns into it there): depthwise convolutions in fp32
        bf16_cpu = device.type == "cpu" and requested in ("bf16-mixed", "bf16", "16-mixed", "16")
        return PrecisionPlan(requested, requested, False, "as configured", fp32_depthwise=bf16_cpu)
    what = {"cuda": "the GPU", "cpu": "the CPU"}.get(device.type, device.type)
    if inference.bf16_native(device):
        native = "bf16 support" if device.type == "cuda" else "native bf16 (AVX512-BF16 / AMX)"
        return PrecisionPlan(
            "auto", "bf16-mixed", True, f"{what} has {native}", fp32_depthwise=device.type == "cpu"
        )
    return PrecisionPlan(
        "auto", "32-true", False, f"{what} has no native bf16 (emulated bf16 would be slower than fp32)"
    )


def build_strategy(spec: Mapping[str, Any] | None):
    """A Lightning strategy from the ``strategy`` config group (``name`` + that strategy's arguments)."""
    spec = dict(spec or {"name": "auto"})
    name = spec.pop("name", "auto")
    if name not in STRATEGIES:
        raise UserError(f"strategy={name!r} is not supported; choose one of {', '.join(STRATEGIES)}.")
    if name == "auto":
        return "auto"
    if name == "ddp_spawn":
        spec.setdefault("start_method", "spawn")
    if name in ("ddp", "ddp_spawn"):
        return DDPStrategy(**spec)
    classes = spec.pop("auto_wrap_policy", None) or []
    return FSDPStrategy(auto_wrap_policy={_block_class(c) for c in classes} or None, **spec)


def _block_class(path: str) -> type:
    try:
        return get_class(path)
    except Exception as err:
        raise UserError(
            f"strategy.auto_wrap_policy names {path!r}, which is not an importable class ({err}). "
            "Fix: list module classes such as timm.models._efficientnet_blocks.InvertedResidual."
        ) from err


def trainer_kwargs(trainer_cfg: Mapping[str, Any], strategy_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``lightning.Trainer`` keyword arguments from ``cfg.trainer`` and ``cfg.strategy``.

    Adds the atomic checkpoint writer and, for ``sync_batchnorm: true``, timm's SyncBN plugin in place
    of Lightning's converter. A ``trainer.strategy`` set directly wins over ``strategy=auto``.
    """
    kwargs = dict(trainer_cfg)
    if "precision" in kwargs:
        kwargs["precision"] = resolve_precision(trainer_cfg).used
    sync_bn = bool(kwargs.pop("sync_batchnorm", False))
    plugins = list(kwargs.pop("plugins", None) or [])
    plugins.append(AtomicCheckpointIO())
    if sync_bn:
        plugins.append(TimmSyncBatchNorm())
    strategy = build_strategy(strategy_cfg)
    if strategy != "auto" or "strategy" not in kwargs:
        kwargs["strategy"] = strategy
    return {**kwargs, "plugins": plugins, "sync_batchnorm": False}


def check_trainer(trainer: L.Trainer, *, sync_batchnorm: bool) -> None:
    """Problems only visible once Lightning has resolved accelerator and devices."""
    if not sync_batchnorm:
        return
    if trainer.num_devices * trainer.num_nodes <= 1:
        log.warning("trainer.sync_batchnorm=true has no effect on a single device (nothing to synchronise).")
    elif isinstance(trainer.accelerator, CPUAccelerator):
        raise UserError(
            "trainer.sync_batchnorm=true with several CPU processes: torch's SyncBatchNorm only runs "
            "on GPUs. "
            "Fix: set trainer.sync_batchnorm=false on CPU, or train on GPUs (trainer=multi_gpu)."
        )


def split_lr_scaling(optim: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cfg.optim`` -> (optimizer settings, ``{lr_scaling, base_batch_size}``)."""
    optim = dict(optim)
    scaling = {k: optim.pop(k) for k in LR_SCALING_KEYS if k in optim}
    return optim, scaling


def scaled_lr(lr: float, *, rule: str, global_batch: int, base_batch: int) -> float:
    """``lr`` scaled from ``base_batch`` to ``global_batch``: ``none``, ``linear`` or ``sqrt``."""
    if rule not in LR_RULES:
        raise UserError(f"optim.lr_scaling={rule!r} is not a rule; choose one of {', '.join(LR_RULES)}.")
    if rule == "none":
        return lr
    if isinstance(base_batch, bool) or not isinstance(base_batch, int) or base_batch < 1:
        raise UserError(
            f"optim.base_batch_size must be a positive integer, got {base_batch!r}. "
            "Fix: the global batch size the base optim.lr was tuned for, e.g. optim.base_batch_size=256."
        )
    ratio = global_batch / base_batch
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


def batch_plan(trainer: L.Trainer, *, per_device: int, optim: Mapping[str, Any]) -> dict[str, Any]:
    """Per-device and global batch size of this trainer, and the learning rate after ``optim.lr_scaling``."""
    _, scaling = split_lr_scaling(optim)
    rule = scaling.get("lr_scaling") or "none"
    accumulate = int(trainer.accumulate_grad_batches)
    global_batch = per_device * trainer.num_devices * trainer.num_nodes * accumulate
    lr = scaled_lr(
        float(optim["lr"]), rule=rule, global_batch=global_batch, base_batch=scaling.get("base_batch_size")
    )
    plan = {
        "per_device_batch_size": per_device,
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "accumulate_grad_batches": accumulate,
        "global_batch_size": global_batch,
        "lr_scaling": rule,
        "base_lr": float(optim["lr"]),
        "lr": lr,
    }
    (log.info if is_rank_zero() else log.debug)(
        "Batch size: %d per device x %d device(s) x %d node(s) x %d accumulation = %d images per optimizer "
        "step; lr %.3g (optim.lr=%.3g, lr_scaling=%s%s)",
        per_device,
        plan["devices"],
        plan["num_nodes"],
        accumulate,
        global_batch,
        lr,
        plan["base_lr"],
        rule,
        f", base_batch_size={scaling.get('base_batch_size')}" if rule != "none" else "",
    )
    return plan


def default_num_workers(devices: Any) -> int:
    """Data-loading workers per process: the CPUs this process may use, shared by the local ranks, minus one
    (for the training process itself), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local_ranks = devices if isinstance(devices, int) and devices > 0 else 1
    if isinstance(devices, (list, tuple)):
        local_ranks = max(1, len(devices))
    return min(8, max(0, cpus // local_ranks - 1))
