"""Detection: the library's train step and predict path vs the raw torchvision detector, same backbone.

Library path: the config from ``conf/`` with ``task=detection data=coco`` defaults (RetinaNet, 256-wide
FPN, timm AdamW, CSV logger, best + last checkpoints, EMA, progress bar), :class:`DetectionModule`
+ a datamodule over in-memory letterboxed images + ``Trainer.fit`` for training, and
the ``mode=predict`` path (:func:`~b4transfer.tasks.detection.predict.run_detection_inference` with the
``predict.*`` defaults: channels_last, bf16 body where native; boxes mapped back to original-image
pixels) for inference.
Baseline: the torchvision ``RetinaNet`` that :func:`~b4transfer.tasks.detection.head.build_detector`
gives as a standalone model (the exported form) holding a copy of the same weights, trained with
``loss = sum(model(images, targets).values()); zero_grad; backward; step`` (``torch.optim.AdamW``,
then timm's ``ModelEmaV3`` update, as the library's default EMA does) and run with ``model(images)``
under ``torch.no_grad()`` for inference.

Training is interleaved inside one ``fit`` exactly as in ``bench_train`` (blocks of library steps and
baseline steps, validation excluded); inference alternates whole passes over the same images. The
detections are compared as ``mode=predict`` checks its own: the share of boxes scoring >= 0.3 in
either run that the other finds (same class, IoU >= 0.9); the random-init class head is given
spread-out weights first, so that such boxes exist.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from torch.utils.data import DataLoader

from b4transfer.tasks.detection.data.datamodule import collate_detection
from benchmarks.bench_train import _Interleave, plain_ema, split_epoch_ends
from benchmarks.common import Result, endless, interleaved, median, quiet, ratio_of_rounds, side, timed

CLASSES = ("circle", "square", "triangle")


def _config(p: dict, run_dir: Path):
    from hydra import compose, initialize_config_dir

    from b4transfer.cli.entry import config_dir

    overrides = [
        "task=detection", "data=coco", f"model.name={p['model']}", "model.pretrained=false",
        f"data.image_size={p['image_size']}", f"data.batch_size={p['batch_size']}", "data.num_workers=0",
        f"head.detector={p.get('detector', 'retinanet')}", f"run_dir={run_dir}", "trainer.accelerator=cpu",
        "head.score_thresh=0.0",  # random init scores below 0.05: keep its boxes (full post-processing)
        "head.anchor_sizes=null",  # torchvision's anchors, as the plain detector (no training boxes here)
        f"trainer.max_epochs={p['epochs']}", f"+trainer.max_steps={p['total_steps']}",
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _images(n: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, dict]]:
    """``n`` letterboxed ``size`` canvases (0..1 floats), 0-4 boxes each, as the datamodule yields them."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = torch.rand(3, size, size, generator=g)
        k = i % 5
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = (0.1 + 0.3 * torch.rand(k, 2, generator=g)) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        items.append((image, {
            "boxes": boxes, "labels": torch.randint(0, len(CLASSES), (k,), generator=g),
            "iscrowd": torch.zeros(k, dtype=torch.int64), "index": i,
            "scale": torch.tensor(1.0), "orig_size": torch.tensor([size, size]),
        }))
    return items


class _Data(L.LightningDataModule):
    def __init__(self, train, val, batch_size: int) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def _loader(self, items, shuffle: bool) -> DataLoader:
        return DataLoader(items, batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate_detection)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, False)


def standalone_detector(module) -> torch.nn.Module:
    """A copy of ``module``'s detector that owns a copy of its backbone: the raw torchvision model."""
    module.head.detector.backbone.share_body(module.backbone)
    raw = copy.deepcopy(module.head.detector)  # deep-copies the shared body reference too
    fpn_backbone = raw.backbone
    fpn_backbone.body = fpn_backbone.__dict__.pop("_shared_body")
    return raw


def _baseline_steps(raw: torch.nn.Module, loader: DataLoader, ema_decay: float | None):
    raw.train()
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-4, weight_decay=0.05)
    ema_update = plain_ema(raw, ema_decay)
    batches, step = endless(loader), 0

    def steps(n: int) -> None:
        nonlocal step
        for _ in range(n):
            images, targets = next(batches)
            targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            loss = sum(raw(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(step)
            step += 1

    return steps


def run(p: dict) -> Result:
    from b4transfer import tasks
    from b4transfer.training.trainer import build_trainer

    torch.manual_seed(0)
    k, blocks = p["k"], p["rounds"] + p["warmup"]
    p = {**p, "total_steps": k * blocks, "epochs": math.ceil(k * blocks / p["steps_per_epoch"])}
    size, b = p["image_size"], p["batch_size"]
    train = _images(b * p["steps_per_epoch"], size)
    val = _images(b, size, seed=1)
    splits = SimpleNamespace(class_names=list(CLASSES), category_ids=[1, 2, 3], multi_label=False)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(p, Path(tmp) / "run")
        module = tasks.from_config(cfg).build_module(cfg, splits)
        raw = standalone_detector(module)
        data = _Data(train, val, b)
        ema_decay = float(cfg.ema.decay) if cfg.ema.enabled else None  # the same recipe: EMA on both sides
        interleave = _Interleave(_baseline_steps(raw, data._loader(train, True), ema_decay), k, blocks)
        trainer = build_trainer(cfg, Path(tmp) / "run", extra_callbacks=[interleave])
        start = time.perf_counter()
        with quiet():
            trainer.fit(module, datamodule=data)
        fit_s = time.perf_counter() - start
    lib, base, epoch_info = split_epoch_ends(interleave, p["warmup"])
    predict = _predict(module, p)
    return Result(
        name="detection",
        title=f"Detection (RetinaNet + FPN): library vs raw torchvision detector, {p['model']} @ {size}",
        settings={key: p[key] for key in ("model", "image_size", "batch_size", "k", "rounds", "warmup",
                                         "steps_per_epoch", "predict_images", "predict_rounds")}
        | {"detector": "retinanet", "fpn_channels": int(cfg.head.fpn_channels),
           "ema_decay_both_sides": ema_decay},
        library=side(lib, "s/step", images_per_s=b / median(lib)),
        baseline=side(base, "s/step", images_per_s=b / median(base)),
        ratio=ratio_of_rounds(lib, base),
        ratio_kind="train time per step, library / raw torchvision loop (median of interleaved blocks "
                   "without an epoch end)",
        target=p.get("target", "<= 1.03"),
        extra={**epoch_info, "one_time_fit_setup_s":
               round(fit_s - (sum(interleave.lib) + sum(interleave.base)) * k, 2), **predict},
    ).check()


def _predict(module, p: dict) -> dict:
    """Images/s of the ``mode=predict`` path vs ``raw(images)`` under no_grad (fp32), and box agreement."""
    from b4transfer.runtime.inference import InferenceSettings
    from b4transfer.tasks.detection.predict import box_agreement, run_detection_inference

    module.eval()
    with torch.no_grad():  # spread the random-init class scores, so that "confident" boxes exist
        cls_logits = module.head.detector.head.classification_head.cls_logits
        cls_logits.weight.normal_(std=0.5)
        cls_logits.bias.zero_()
    raw = standalone_detector(module).eval()
    items = _images(p["predict_images"], p["image_size"], seed=2)
    loader = DataLoader([(x, {k: t[k] for k in ("index", "scale", "orig_size")}) for x, t in items],
                        batch_size=p["batch_size"], collate_fn=collate_detection)
    settings = InferenceSettings(check_agreement=0)  # the predict.* defaults; agreement measured below
    kwargs = {"accelerator": "cpu", "enable_progress_bar": False}
    out = {}

    def library() -> float:
        with quiet():
            return timed(lambda: out.update(lib=run_detection_inference(
                module, loader, settings=settings, trainer_kwargs=kwargs)))

    @torch.no_grad()
    def raw_loop() -> None:
        out["raw"] = [d for images, _ in loader for d in raw(images)]

    samples = interleaved({"library": library, "raw": lambda: timed(raw_loop)}, rounds=p["predict_rounds"])
    n = len(items)
    lib_ips = [n / s for s in samples["library"]]
    raw_ips = [n / s for s in samples["raw"]]
    detections, report = out["lib"]
    matched, total = box_agreement(out["raw"], detections, min_score=0.3)
    return {
        "predict_images_per_s": round(median(lib_ips), 2),
        "predict_raw_images_per_s": round(median(raw_ips), 2),
        "predict_ratio": round(ratio_of_rounds(lib_ips, raw_ips), 3),
        "predict_target": ">= 0.97",
        "predict_precision": report["precision"],
        "predict_channels_last": report["channels_last"],
        "predict_box_agreement_vs_raw_fp32": round(matched / total, 4) if total else None,
        "predict_boxes_compared": total,
    }
