"""Segmentation train step: the library beside segmentation_models_pytorch, the same timm encoder.

Library path: the config from ``conf/`` with ``task=segmentation`` defaults for ``head.decoder`` (semantic
FPN 128/128, or U-Net 256..16), timm AdamW, CSV logger, best + last checkpoints, EMA, progress bar:
:class:`SegmentationModule` + ``Trainer.fit`` over in-memory canvases.
Baseline: ``smp.FPN`` (its defaults: pyramid 256, segmentation 128, dropout 0.2) or ``smp.Unet`` (decoder
256..16) on ``tu-<model>`` holding a copy of the library's encoder weights, trained by ``loss =
cross_entropy(model(normalised x), y, ignore_index=255); zero_grad; backward; step`` with
``torch.optim.AdamW`` and timm's ``ModelEmaV3`` (as the library's default EMA).

Steps are interleaved inside one ``fit`` as in ``bench_train`` (blocks of library steps and SMP steps,
validation excluded). Needs ``pip install segmentation-models-pytorch`` (skipped without it).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from benchmarks.bench_train import _Interleave, plain_ema, split_epoch_ends
from benchmarks.common import Result, endless, median, quiet, ratio_of_rounds, side

CLASSES = ("background", "a", "b", "c")


def _config(p: dict, run_dir: Path):
    from hydra import compose, initialize_config_dir

    from b4transfer.cli.entry import config_dir

    overrides = [
        "task=segmentation",
        "data=seg_folder",
        f"head.decoder={p['decoder']}",
        f"model.name={p['model']}",
        "model.pretrained=false",
        f"data.image_size={p['image_size']}",
        f"data.batch_size={p['batch_size']}",
        "data.num_workers=0",
        f"run_dir={run_dir}",
        "trainer.accelerator=cpu",
        f"trainer.max_epochs={p['epochs']}",
        f"+trainer.max_steps={p['total_steps']}",
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _items(n: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(3, size, size, generator=g), torch.randint(0, len(CLASSES), (size, size), generator=g))
        for _ in range(n)
    ]


class _Data(L.LightningDataModule):
    def __init__(self, train, val, batch_size: int) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)


def smp_model(module, decoder: str) -> torch.nn.Module:
    """``smp.FPN`` / ``smp.Unet`` on ``tu-<model>`` with a copy of ``module``'s encoder weights."""
    from benchmarks.plain_segmentation import build

    model = build(decoder, module.hparams.model["name"], None, len(module.class_names))
    own = model.encoder.model.state_dict()
    model.encoder.model.load_state_dict(
        {k: v for k, v in module.backbone.state_dict().items() if k in own}, strict=False
    )
    return model


def _baseline_steps(model, module, loader, ema_decay: float | None):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    mean, std = module.mean.clone(), module.std.clone()
    ema_update, batches, step = plain_ema(model, ema_decay), endless(loader), 0

    def steps(n: int) -> None:
        nonlocal step
        for _ in range(n):
            x, y = next(batches)
            loss = F.cross_entropy(model((x - mean) / std), y, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(step)
            step += 1

    return steps


def run(p: dict) -> Result:
    name = f"segmentation_{p.get('decoder', 'fpn')}"
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return Result(
            name=name,
            title="Segmentation train step vs SMP",
            status="skipped",
            reason='segmentation_models_pytorch is not installed (pip install "b4transfer[bench]")',
        )
    from b4transfer import tasks
    from b4transfer.training.trainer import build_trainer

    torch.manual_seed(0)
    k, blocks = p["k"], p["rounds"] + p["warmup"]
    p = {
        "decoder": "fpn",
        **p,
        "total_steps": k * blocks,
        "epochs": math.ceil(k * blocks / p["steps_per_epoch"]),
    }
    size, b = p["image_size"], p["batch_size"]
    data = _Data(_items(b * p["steps_per_epoch"], size), _items(b, size, seed=1), b)
    splits = SimpleNamespace(class_names=list(CLASSES), ignore_index=255, palette=None, class_pixels=[1] * 4)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(p, Path(tmp) / "run")
        module = tasks.from_config(cfg).build_module(cfg, splits)
        baseline = smp_model(module, p["decoder"])
        ema_decay = float(cfg.ema.decay) if cfg.ema.enabled else None  # the same recipe on both sides
        loader = DataLoader(data.train, batch_size=b, shuffle=True)
        interleave = _Interleave(_baseline_steps(baseline, module, loader, ema_decay), k, blocks)
        trainer = build_trainer(cfg, Path(tmp) / "run", extra_callbacks=[interleave])
        start = time.perf_counter()
        with quiet():
            trainer.fit(module, datamodule=data)
        fit_s = time.perf_counter() - start
    lib, base, epoch_info = split_epoch_ends(interleave, p["warmup"])
    params = {
        "library": sum(t.numel() for t in module.head.parameters()),
        "smp": sum(t.numel() for n, t in baseline.named_parameters() if not n.startswith("encoder.")),
    }
    return Result(
        name=name,
        title=f"Segmentation train step ({p['decoder']}): library vs segmentation_models_pytorch, "
        f"{p['model']} @ {size}",
        settings={
            key: p[key]
            for key in (
                "model",
                "decoder",
                "image_size",
                "batch_size",
                "k",
                "rounds",
                "warmup",
                "steps_per_epoch",
            )
        }
        | {"ema_decay_both_sides": ema_decay},
        library=side(lib, "s/step", images_per_s=b / median(lib)),
        baseline=side(base, "s/step", images_per_s=b / median(base)),
        ratio=ratio_of_rounds(lib, base),
        ratio_kind="train time per step, library / SMP plain loop (median of interleaved blocks without an "
        "epoch end)",
        target=p.get("target", "<= 1.05"),
        extra={
            **epoch_info,
            "decoder_parameters": params,
            "one_time_fit_setup_s": round(fit_s - (sum(interleave.lib) + sum(interleave.base)) * k, 2),
        },
    ).check()
