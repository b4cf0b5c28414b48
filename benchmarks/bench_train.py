"""Training overhead: the library's default training path vs a plain PyTorch loop.

Library path: the config from ``conf/`` with its defaults (CSV logger, best + last checkpoints,
learning-rate monitor, progress bar, timm AdamW with per-group LRs and the cosine schedule,
``ThroughputMeter``), ``ClassificationModule`` + a datamodule over in-memory tensors + ``Trainer.fit``.
Baseline: ``for x, y in loader: loss = ce(model(x), y); zero_grad; backward; step`` with
``torch.optim.AdamW`` on a copy of the same model, the same batches, and — since the library's
default recipe averages the weights (``ema.enabled=true``) — timm's ``ModelEmaV3`` update after each
step with the same decay and warm-up: a hand-written loop with the same recipe (the update costs
~2 ms per step for B0 on this CPU, ~0.5 % of a step at 160 px, batch 16).

The two are interleaved inside one ``fit``: a callback runs blocks of ``k`` plain-loop steps
between blocks of ``k`` library steps (L0 B0 B1 L1 L2 B2 ..., so each pair is adjacent and the
order alternates), and the library's time for a block is the wall time between blocks (hooks,
logging, optimizer and scheduler steps, epoch-end checkpointing included; validation, which the
plain loop does not do, excluded).
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import Result, endless, median, quiet, ratio_of_rounds, side, sync


class _Interleave(L.Callback):
    """Blocks of ``k`` library steps and ``k`` baseline steps in the order L0 B0 B1 L1 L2 B2 B3 L3 ...

    Each pair (Li, Bi) is adjacent, and which of the two runs first alternates, so neither side
    always follows the other.
    """

    def __init__(self, baseline_steps, k: int, blocks: int) -> None:
        self.baseline_steps, self.k, self.blocks = baseline_steps, k, blocks
        self.lib: list[float] = []
        self.base: list[float] = []
        self.epoch_end: list[bool] = []  # whether library block i holds an epoch end (checkpoint writes)
        self._epoch_ended = False
        self._mark: float | None = None
        self._count = 0
        self._val_start = 0.0
        self._val = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._mark is None:
            sync()
            self._mark = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:  # runs before ModelCheckpoint's
        if not trainer.sanity_checking:
            self._val += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_ended = True  # the epoch-end work falls into the block that is open now

    def _baseline_block(self) -> None:
        start = time.perf_counter()
        self.baseline_steps(self.k)
        sync()
        self.base.append((time.perf_counter() - start) / self.k)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._count += 1
        if self._count < self.k:
            return
        sync()
        self.lib.append((time.perf_counter() - self._mark - self._val) / self.k)
        self.epoch_end.append(self._epoch_ended)
        self._epoch_ended = False
        i = len(self.lib) - 1
        if i % 2 == 0:  # Bi right after Li, then B(i+1) right before L(i+1)
            self._baseline_block()
            if i + 1 < self.blocks:
                self._baseline_block()
        self._count, self._val = 0, 0.0
        self._mark = time.perf_counter()


def split_epoch_ends(interleave: _Interleave, warmup: int) -> tuple[list[float], list[float], dict]:
    """Per-step samples of the blocks without an epoch end, and what the epoch ends cost apart.

    A benchmark "epoch" is a few steps, so the per-epoch work (checkpoint writes; validation is already
    excluded) would weigh 10-100x more per step than in a real epoch of hundreds of steps: it is
    reported as seconds per epoch instead, next to the ratio over all blocks.
    """
    lib, base, ends = interleave.lib[warmup:], interleave.base[warmup:], interleave.epoch_end[warmup:]
    steady = [(a, b) for a, b, e in zip(lib, base, ends) if not e]
    extra = [(a - b) * interleave.k for a, b, e in zip(lib, base, ends) if e]
    info = {"ratio_all_blocks": round(ratio_of_rounds(lib, base), 4), "ratio_of_sums": sum(lib) / sum(base),
            "epoch_end_blocks": len(extra),
            "epoch_end_extra_s": round(median(extra), 3) if extra else None}
    return [a for a, _ in steady], [b for _, b in steady], info


def _config(p: dict, run_dir: Path, *, accelerator: str, precision: str):
    from hydra import compose, initialize_config_dir

    from b4transfer.cli.entry import config_dir

    overrides = [
        f"model.name={p['model']}", "model.pretrained=false", f"data.image_size={p['image_size']}",
        f"data.batch_size={p['batch_size']}", "data.num_workers=0", f"run_dir={run_dir}",
        f"trainer.accelerator={accelerator}", f"precision={precision}",
        f"trainer.max_epochs={p['epochs']}", f"+trainer.max_steps={p['total_steps']}",
        f"model.channels_last={str(p.get('channels_last', False)).lower()}",
        *p.get("overrides", []),
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def plain_ema(model: torch.nn.Module, ema_decay: float | None):
    """``update(step)`` of timm's ``ModelEmaV3`` (same decay and warm-up as the library's EMA), or a no-op."""
    if ema_decay is None:
        return lambda step: None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=ema_decay, use_warmup=True)
    return lambda step: ema.update(model, step)


def _baseline(module, loader, *, device, precision: str, channels_last: bool, ema_decay: float | None):
    """A plain loop over a copy of ``module``'s network; returns ``steps(n)``."""
    model = torch.nn.Sequential(copy.deepcopy(module.backbone), copy.deepcopy(module.head.fc)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    ema_update = plain_ema(model, ema_decay)
    step = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in precision else None
    batches = endless(loader)

    def steps(n: int) -> None:
        nonlocal step
        for _ in range(n):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast or contextlib.nullcontext():
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(step)
            step += 1

    return steps


def run(p: dict, *, accelerator: str = "cpu", precision: str = "32-true", target: str = "<= 1.03") -> Result:
    """Interleaved library vs plain-loop training steps; ``p``: model, image_size, batch_size, k, rounds.

    ``target`` ``<= x`` compares time per step (library / plain); ``>= x`` compares images/s.
    """
    from b4transfer import tasks
    from b4transfer.runtime.speed import apply_speed_switches
    from b4transfer.training.callbacks import ThroughputMeter
    from b4transfer.training.trainer import build_trainer

    torch.manual_seed(0)
    k, blocks = p["k"], p["rounds"] + p["warmup"]
    p = {**p, "total_steps": k * blocks, "epochs": math.ceil(k * blocks / p["steps_per_epoch"])}
    n, size, classes = p["batch_size"] * p["steps_per_epoch"], p["image_size"], 10
    data = TensorDataset(torch.randn(n, 3, size, size), torch.randint(0, classes, (n,)))
    b = p["batch_size"]
    val = TensorDataset(torch.randn(b, 3, size, size), torch.randint(0, classes, (b,)))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(p, Path(tmp) / "run", accelerator=accelerator, precision=precision)
        names = [f"c{i}" for i in range(classes)]
        splits = SimpleNamespace(class_names=names, multi_label=False)
        module = tasks.from_config(cfg).build_module(cfg, splits)
        device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
        loader = DataLoader(data, batch_size=p["batch_size"], shuffle=True)
        ema_decay = float(cfg.ema.decay) if cfg.ema.enabled else None  # the same recipe: EMA on both sides
        steps = _baseline(module, loader, device=device, precision=precision,
                          channels_last=p.get("channels_last", False), ema_decay=ema_decay)
        interleave = _Interleave(steps, k, blocks)
        datamodule = L.LightningDataModule.from_datasets(
            train_dataset=data, val_dataset=val, batch_size=p["batch_size"], num_workers=0
        )
        module = apply_speed_switches(module, cfg.model)  # model.channels_last, as train() does
        trainer = build_trainer(cfg, Path(tmp) / "run", extra_callbacks=[ThroughputMeter(), interleave])
        start = time.perf_counter()
        with quiet():  # the progress bar and model summary
            trainer.fit(module, datamodule=datamodule)
        fit_s = time.perf_counter() - start
    lib, base, epoch_info = split_epoch_ends(interleave, p["warmup"])
    one_time = fit_s - sum(interleave.lib) * k - sum(interleave.base) * k
    speed = target.startswith(">=")  # GPU target: images/s library / plain loop
    ratio = ratio_of_rounds(base, lib) if speed else ratio_of_rounds(lib, base)
    kind = "images/s, library / plain loop" if speed else "time per step, library / plain loop"
    images = p["batch_size"]
    return Result(
        name="train_overhead" if accelerator == "cpu" else "gpu_train",
        title=f"Training step: library (Trainer, defaults) vs plain loop, {p['model']} @ {size}",
        settings={**{key: p[key] for key in ("model", "image_size", "batch_size", "k", "rounds", "warmup",
                                              "steps_per_epoch")}, "precision": precision,
                  "channels_last": p.get("channels_last", False), "accelerator": accelerator,
                  "ema_decay_both_sides": ema_decay},
        library=side(lib, "s/step", images_per_s=images / median(lib)),
        baseline=side(base, "s/step", images_per_s=images / median(base)),
        ratio=ratio,
        ratio_kind=f"{kind} (median of interleaved blocks without an epoch end)",
        target=target,
        extra={**epoch_info, "one_time_fit_setup_s": round(one_time, 2),
               "epochs": trainer.current_epoch, "steps": trainer.global_step,
               **(_framework_overhead(p["tiny"], accelerator, precision) if p.get("tiny") else {})},
    ).check()


def _framework_overhead(tiny: dict, accelerator: str, precision: str) -> dict:
    """Absolute per-step cost of the library path, on a model so small that it is most of a step.

    The ratio above is noisy on a shared machine (a few % between runs); this milliseconds figure
    says what the overhead is for any step time: ratio ~ 1 + overhead / step time.
    """
    r = run(tiny, accelerator=accelerator, precision=precision)
    diffs = [a - b for a, b in zip(r.library["samples"], r.baseline["samples"])]
    return {"framework_overhead_ms_per_step": round(1000 * median(diffs), 2),
            "framework_overhead_setting": f"{tiny['model']} @ {tiny['image_size']} px, "
                                          f"batch {tiny['batch_size']}",
            "tiny_step_ms": round(1000 * r.baseline["median"], 2)}
