"""How a run trains: ``optim``, ``scheduler``, ``finetune``, ``ema``, ``trainer`` (with ``precision``),
``strategy``, ``checkpoint``, ``early_stopping`` and ``lr_find``."""

from dataclasses import dataclass
from typing import Any

from b4transfer.settings.schema import Schema, given


@dataclass
class OptimSettings(Schema):
    """The optimizer (``conf/optim/*.yaml``); keys it does not declare go on to timm's optimizer."""

    OPEN = True
    DEFAULTS = ("optim/adamw.yaml", "")

    name: str = given()  # any timm optimizer
    lr: float = given()  # head LR
    weight_decay: float = given()
    backbone_lr_mult: float = given()
    lr_scaling: str = given()  # none | linear | sqrt
    base_batch_size: int = given()
    layer_decay: float | None = given()
    eps: float | None = given()  # rmsproptf
    momentum: float | None = given()  # sgd, rmsproptf
    alpha: float | None = given()  # rmsproptf

    RESERVED = ("model_or_params", "params", "opt", "param_group_fn")

    def receivers(self):
        from timm.optim import create_optimizer_v2, get_optimizer_class

        return f"timm's {self.name} optimizer", [create_optimizer_v2, get_optimizer_class(self.name)]

    def optimizer_kwargs(self) -> dict[str, Any]:
        """What goes to timm's optimizer besides the LR, weight decay and the group settings."""
        own = ("name", "lr", "weight_decay", "backbone_lr_mult", "layer_decay")
        return self.kwargs(*own, "lr_scaling", "base_batch_size")


@dataclass
class SchedulerSettings(Schema):
    """The LR schedule (``conf/scheduler/*.yaml``); keys it does not declare go on to timm's scheduler."""

    OPEN = True
    DEFAULTS = ("scheduler/none.yaml", "")

    name: str = given()  # cosine | step | ... | none
    warmup_epochs: float | None = given()
    warmup_lr: float | None = given()
    min_lr: float | None = given()
    decay_epochs: float | None = given()
    decay_rate: float | None = given()

    RESERVED = ("optimizer", "sched", "num_epochs", "step_on_epochs", "updates_per_epoch")

    def receivers(self):
        from timm.scheduler import create_scheduler_v2

        return "timm's create_scheduler_v2", [create_scheduler_v2]


@dataclass
class FinetuneSettings(Schema):
    """The freezing schedule (``conf/finetune/*.yaml``), instantiated from ``_target_`` (a class of your own
    takes its own keys)."""

    OPEN = True

    _target_: str = given()
    _convert_: str | None = given()
    bn: str | None = given()  # train | frozen
    warmup_epochs: float | None = given()
    unfreeze_at_epoch: int | None = given()
    unfreeze_at_epochs: list[int] | None = given()

    def receivers(self):
        from hydra.utils import get_class

        return f"finetune._target_={self._target_}", [get_class(self._target_)]


@dataclass
class EmaSettings(Schema):
    """The exponential moving average of the weights."""

    DEFAULTS = ("config.yaml", "ema")

    enabled: bool = given()
    decay: float = given()
    warmup: bool = given()
    update_every_n_steps: int = given()
    device: str | None = given()


@dataclass
class TrainerSettings(Schema):
    """``lightning.Trainer`` arguments (``conf/trainer/*.yaml``, ``precision`` from ``conf/precision/``); keys
    it does not declare go on to the Trainer."""

    OPEN = True

    accelerator: str = given()
    devices: Any = given()  # a number, a list of device ids, or auto
    max_epochs: int | None = given()
    log_every_n_steps: int | None = given()
    gradient_clip_val: float | None = given()
    accumulate_grad_batches: int = given()
    num_nodes: int = given()
    sync_batchnorm: bool = given()
    deterministic: bool | str | None = given()  # true | false | warn
    benchmark: bool | None = given()
    num_sanity_val_steps: int | None = given()
    limit_train_batches: int | float | None = given()  # batches, or a share of them
    limit_val_batches: int | float | None = given()
    enable_progress_bar: bool = given()
    precision: str | int = given()  # 32-true | bf16-mixed | 16-mixed | auto | ...

    RESERVED = ("callbacks", "logger", "default_root_dir")
    RESERVED_FIX = {
        "callbacks": "add one with +callbacks.NAME._target_=your.Callback",
        "logger": "choose trackers with logger=... (conf/logger/)",
        "default_root_dir": "runs go to checkpoint.runs_root, or run_dir=...",
    }

    def receivers(self):
        import lightning as L

        return "lightning.Trainer", [L.Trainer.__init__]


@dataclass
class StrategySettings(Schema):
    """The device strategy (``conf/strategy/*.yaml``); keys it does not declare go on to Lightning's."""

    OPEN = True

    name: str = given()  # auto | ddp | ddp_spawn | fsdp
    find_unused_parameters: bool | None = given()
    gradient_as_bucket_view: bool | None = given()
    auto_wrap_policy: list[str] | None = given()
    sharding_strategy: str | None = given()
    state_dict_type: str | None = given()
    cpu_offload: bool | None = given()

    RESERVED = ("accelerator", "parallel_devices", "cluster_environment", "checkpoint_io", "precision_plugin",
                "module", "process_group", "device_id", "device_ids")
    RESERVED_FIX = dict.fromkeys(RESERVED, "Lightning sets it from trainer.accelerator / trainer.devices")

    def receivers(self):
        if self.name in ("ddp", "ddp_spawn"):
            from lightning.pytorch.strategies import DDPStrategy
            from torch.nn.parallel import DistributedDataParallel

            return "Lightning's DDPStrategy (and torch's DistributedDataParallel)", [
                DDPStrategy.__init__, DistributedDataParallel.__init__]
        if self.name == "fsdp":
            from lightning.pytorch.strategies import FSDPStrategy
            from torch.distributed.fsdp import FullyShardedDataParallel

            return "Lightning's FSDPStrategy (and torch's FullyShardedDataParallel)", [
                FSDPStrategy.__init__, FullyShardedDataParallel.__init__]
        return None  # auto: no arguments to pass (build_strategy ignores them)


@dataclass
class CheckpointSettings(Schema):
    """Which checkpoints a run keeps (``monitor``: set by the task's YAML)."""

    monitor: str | None = given()
    mode: str = given()  # max | min
    save_top_k: int = given()
    every_n_train_steps: int | None = given()
    best_weights_only: bool = given()
    runs_root: str = given()


@dataclass
class EarlyStoppingSettings(Schema):
    """Stop once ``checkpoint.monitor`` stops improving."""

    patience: int | None = given()
    min_delta: float = given()


@dataclass
class LrFindSettings(Schema):
    """``mode=lr_find``: the LR range test."""

    min_lr: float = given()
    max_lr: float = given()
    num_training: int = given()
    mode: str = given()  # exponential | linear
