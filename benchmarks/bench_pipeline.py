"""Input pipeline: decode + transform images/s per worker, with vs without JPEG draft decoding.

Both sides are the library's own dataset (``ClassificationDataModule.dataset(split)[i]``: decode,
EXIF, RGB, then timm's training transform with the default ``data.augment``, or the eval
transform), on generated photo-sized JPEGs; the only difference is ``data.draft_factor``
(1.5, the default, vs ``None``: full-size decoding). A DataLoader worker runs with one torch
thread, so the measurement does too. The model's own training rate at the same size is measured
alongside, to show how many workers it takes to keep the model fed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Result, interleaved, median, ratio_of_rounds, side, timed
from benchmarks.data import photo_jpegs


def _datamodule(splits, module, draft_factor, augment):
    from b4transfer.tasks.classification.data.datamodule import ClassificationDataModule

    return ClassificationDataModule(
        splits, train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"],
        batch_size=8, num_workers=0, augment=augment, draft_factor=draft_factor,
    )


def _model_rate(module, size: int, batch: int, steps: int) -> float:
    """Training images/s of the network itself (fp32 forward + backward + AdamW step)."""
    net = torch.nn.Sequential(module.backbone, module.head.fc).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    return batch / median([timed(step) for _ in range(steps)])


def run(p: dict) -> Result:
    from b4transfer.data.splits import DatasetSplits, Sample
    from b4transfer.data.transforms import DRAFT_FACTOR
    from b4transfer.tasks.classification import ClassificationModule

    torch.manual_seed(0)
    module = ClassificationModule(class_names=["a", "b"], model={"name": p["model"], "pretrained": False},
                            data=p.get("data"))
    train_size = module.data_config["train"]["input_size"][-1]
    eval_size = module.data_config["eval"]["input_size"][-1]
    augment = p["augment"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = photo_jpegs(Path(tmp), p["images"], size=tuple(p["photo_size"]))
        generate_s = time.perf_counter() - start
        mb = sum(q.stat().st_size for q in paths) / len(paths) / 2**20
        samples = [Sample(q, i % 2) for i, q in enumerate(paths)]
        splits = DatasetSplits(["a", "b"], samples, samples)
        draft = _datamodule(splits, module, DRAFT_FACTOR, augment)
        full = _datamodule(splits, module, None, augment)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker
        try:
            def rate(dm, split):
                ds = dm.dataset(split)
                return lambda: timed(lambda: [ds[i] for i in range(len(ds))])

            train = interleaved({"draft": rate(draft, "train"), "full": rate(full, "train")},
                                rounds=p["rounds"], warmup=1)
            evaluation = interleaved({"draft": rate(draft, "val"), "full": rate(full, "val")},
                                     rounds=p["rounds"], warmup=1)
            decoded = draft.dataset("train")
            from b4transfer.data.images import load_rgb

            decoded_size = load_rgb(paths[0], draft_size=decoded.draft_size).size
        finally:
            torch.set_num_threads(threads)
    n = len(paths)
    ips = {k: [n / s for s in v] for k, v in train.items()}
    eval_ips = {k: [n / s for s in v] for k, v in evaluation.items()}
    model_ips = _model_rate(module, train_size, p["model_batch"], p["model_steps"])
    per_worker = median(ips["draft"])
    return Result(
        name="input_pipeline",
        title=f"Input pipeline per worker: decode + train transform @ {train_size} from "
              f"{p['photo_size'][0]}x{p['photo_size'][1]} JPEGs, draft vs full decode",
        settings={"images": n, "photo_size": p["photo_size"], "mean_file_mib": round(mb, 2),
                  "train_size": train_size, "eval_size": eval_size, "draft_factor": DRAFT_FACTOR,
                  "augment": augment, "torch_threads": 1, "rounds": p["rounds"], "model": p["model"]},
        library=side(ips["draft"], "images/s/worker"),
        baseline=side(ips["full"], "images/s/worker"),
        ratio=ratio_of_rounds(ips["draft"], ips["full"]),
        ratio_kind="images/s per worker, draft / full-size decoding",
        target=">= 1.5",
        extra={"eval_draft_images_per_s": median(eval_ips["draft"]),
               "eval_full_images_per_s": median(eval_ips["full"]),
               "eval_ratio": ratio_of_rounds(eval_ips["draft"], eval_ips["full"]),
               "decoded_size_with_draft": list(decoded_size),
               "model_train_images_per_s": model_ips,
               "workers_to_feed_model": round(model_ips / per_worker, 3),
               "generate_s": round(generate_s, 1)},
    ).check()
