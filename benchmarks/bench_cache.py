"""Cached-feature linear probe: an epoch on cached features vs a frozen-backbone epoch.

Both sides are library training runs with the default callbacks (checkpointing, CSV logger, LR
monitor, progress bar) on the same JPEG files (``data.augment=false``, ``num_workers=0``):

- frozen backbone: the backbone frozen in eval mode and run on every batch (train + val);
- cached: ``data.cache_features=true`` — features extracted once, head trained on them.

An epoch is ``on_train_epoch_start`` -> ``on_train_epoch_end`` (training, validation, checkpoint).
The runs alternate (frozen, cached, cached, frozen, ...); cached runs have more epochs (they are
cheap, and their per-epoch fixed costs — checkpoint writes, the confusion-matrix plot — are noisy);
the extraction time is reported apart.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import Result, interleaved, median, quiet, side
from benchmarks.data import demo_files


class _EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.epochs: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(time.perf_counter() - self._start)


def _config(p: dict, root: Path, run_dir: Path, cached: bool, extra: tuple[str, ...] = ()):
    from hydra import compose, initialize_config_dir

    from b4transfer.cli.entry import config_dir

    overrides = [
        f"model.name={p['model']}",
        "model.pretrained=false",
        "finetune=linear_probe",
        "data=folder",
        f"data.root={root}",
        f"data.batch_size={p['batch_size']}",
        "data.num_workers=0",
        "data.augment=false",
        f"data.cache_features={str(cached).lower()}",
        f"run_dir={run_dir}",
        "trainer.accelerator=cpu",
        f"trainer.max_epochs={p['cached_epochs'] if cached else p['epochs']}",
        "scheduler=none",
    ]
    if p.get("image_size"):
        overrides.append(f"data.image_size={p['image_size']}")
    overrides += list(extra)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _fit(
    p: dict, root: Path, run_dir: Path, cached: bool, extra: tuple[str, ...] = ()
) -> tuple[list[float], dict]:
    from b4transfer import tasks
    from b4transfer.modes.common import build_splits
    from b4transfer.training.trainer import build_trainer

    cfg = _config(p, root, run_dir, cached, extra)
    L.seed_everything(0, verbose=False)
    splits = build_splits(cfg, tasks.from_config(cfg))
    module = tasks.from_config(cfg).build_module(cfg, splits)
    datamodule = tasks.from_config(cfg).build_datamodule(cfg, splits, module)  # cached: the feature cache
    if not cached:
        module.backbone.requires_grad_(False).eval()
    timer = _EpochTimer()
    trainer = build_trainer(cfg, run_dir, extra_callbacks=[timer])
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=datamodule)
    extract = getattr(datamodule, "extract_seconds", {})
    return timer.epochs, {"extract_s": sum(extract.values()), "images": len(splits.train) + len(splits.val)}


def run(p: dict) -> Result:
    epochs: dict[str, list[float]] = {"frozen": [], "cached": [], "cached_first": []}
    extract: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        splits = demo_files(tmp / "images" / "all", p["train_images"], p["val_images"], size=p["file_size"])
        for i, s in enumerate(splits.train + splits.val):  # class folders for data=folder
            dest = tmp / "data" / ("train" if i < len(splits.train) else "val") / splits.class_names[s.target]
            dest.mkdir(parents=True, exist_ok=True)
            s.path.rename(dest / s.path.name)
        runs = iter(range(10_000))

        def frozen() -> float:
            times, _ = _fit(p, tmp / "data", tmp / f"run{next(runs)}", cached=False)
            epochs["frozen"] += times
            return median(times)

        def cached() -> float:
            times, info = _fit(p, tmp / "data", tmp / f"run{next(runs)}", cached=True)
            epochs["cached_first"].append(times[0])
            epochs["cached"] += times[1:]
            extract.append(info["extract_s"])
            return median(times[1:])

        torch.manual_seed(0)
        samples = interleaved({"frozen": frozen, "cached": cached}, rounds=p["rounds"], warmup=0)
        # the default EMA of the weights averages (and swaps in for validation) the frozen backbone
        # too; one cached run without it shows what that costs per epoch
        no_ema, _ = _fit(p, tmp / "data", tmp / "run-no-ema", cached=True, extra=("ema.enabled=false",))
    del samples  # per-fit medians; the ratio pools every epoch of every fit instead
    ratio = median(epochs["frozen"]) / median(epochs["cached"])
    n_img = p["train_images"] + p["val_images"]
    return Result(
        name="cached_probe",
        title=f"Linear probe epoch: cached features vs frozen backbone, {p['model']}",
        settings={k: p[k] for k in ("model", "train_images", "val_images", "batch_size", "epochs",
                                     "cached_epochs", "rounds")}
        | {"image_size": p.get("image_size") or "model default", "augment": False, "num_workers": 0},
        library=side(epochs["cached"], "s/epoch (after the first)"),
        baseline=side(epochs["frozen"], "s/epoch"),
        ratio=ratio,
        ratio_kind="epoch time, frozen backbone / cached features (medians over all epochs)",
        target=">= 20",
        extra={
            "cached_first_epoch_s": median(epochs["cached_first"]),
            "feature_extraction_s": median(extract),
            "extraction_images_per_s": n_img / median(extract),
            "cached_epoch_s_without_ema": median(no_ema[1:]),
            "ratio_without_ema": median(epochs["frozen"]) / median(no_ema[1:]),
        },
    ).check()
