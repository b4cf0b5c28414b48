"""Prediction's input pipeline against the model: images/s of the loader alone, of the model alone, and of
the whole ``mode=predict`` path, on the CPU or (``device="cuda"``) a GPU.

- **pipeline alone**: prediction's own ``DataLoader`` (``predict_dataset``: JPEG draft decoding, resize +
  crop, ``uint8`` tensors) with ``workers`` worker processes, pinned memory on a GPU, each batch copied to
  the device (``non_blocking``); beside it the float32 loader prediction used before (timm's normalising
  eval transform: 4x the bytes through the workers and the copy);
- **model alone**: the prediction step as ``mode=predict`` runs it (``predict.runtime``: torch's fast path,
  channels_last and bf16 where native, or the runtime ``auto`` picks) on batches already decoded and on
  the device;
- **full path**: :func:`run_inference` over the loader of the files (decode, copy and model together).

The ratio is full path / model alone (target >= 0.9: the model, not the loader, sets the speed);
``bound`` names the slower of loader and model. Per-worker decoding (one thread, as in a worker) is
measured for the library's PIL draft decoding and for ``torchvision.io.decode_jpeg`` at full size plus a
tensor resize, and on a GPU for nvJPEG (``decode_jpeg(..., device="cuda")``, a batch at a time).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import Result, interleaved, median, quiet, ratio_of_rounds, side, sync, timed
from benchmarks.data import photo_jpegs


def _config(p: dict, dev: torch.device):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "mode": "predict", "tta": None, "data": {"batch_size": p["batch_size"], "draft_factor": 1.5},
        "predict": {"runtime": p.get("runtime", "torch"), "check_agreement": p.get("check_agreement", 8),
                    "batch_size": p["batch_size"]},
        "trainer": {"accelerator": "gpu" if dev.type == "cuda" else "cpu"},
        "export": {"onnx_opset": 17, "int8_calibration_images": p.get("int8_calibration_images", 16)},
    })


def _loaders(cfg, module, paths, p: dict, dev: torch.device):
    """``(uint8 loader, float32 loader)``: prediction's, and the normalising one it replaced."""
    from b4transfer.data.dataset import PathDataset
    from b4transfer.data.transforms import build_transforms
    from b4transfer.tasks.classification.predict import predict_dataset

    uint8 = predict_dataset(cfg, module, paths)
    _, float_tf = build_transforms(train_cfg=module.data_config["train"], eval_cfg=module.data_config["eval"])
    float32 = PathDataset(paths, transform=float_tf, draft_size=uint8.draft_size)
    kwargs = {"batch_size": p["batch_size"], "num_workers": p["workers"], "pin_memory": dev.type == "cuda"}
    return DataLoader(uint8, **kwargs), DataLoader(float32, **kwargs)


def _drain(loader, dev: torch.device) -> float:
    """Seconds to take every batch from ``loader`` onto ``dev``."""

    def go() -> None:
        for x, _ in loader:
            x.to(dev, non_blocking=True)

    return timed(go)


def _model_step(cfg, module, choice, batches: list, dev: torch.device):
    """A function timing the model alone over decoded ``batches`` (on its device), as predict runs it."""
    from b4transfer.runtime.inference import InferenceSettings, predict_trainer_setup
    from b4transfer.tasks.classification.runtime import ADAPTER

    settings = InferenceSettings()
    exported = choice is not None and choice.exported
    _, _, precision = predict_trainer_setup(settings, {"accelerator": cfg.trainer.accelerator})
    where = torch.device("cpu") if exported else dev
    on_device = [(x.to(where), i) for x, i in batches]

    def context():
        if exported:
            return choice.patch(module)
        return ADAPTER.torch_context(module, settings=settings, precision=precision, device=dev)

    @torch.inference_mode()
    def go() -> float:
        with context():
            module.to(where)
            return timed(lambda: [module.predict_step(b, i) for i, b in enumerate(on_device)])

    return go


def _decode_rates(paths, module, dev: torch.device) -> dict[str, float]:
    """Images/s of one thread: PIL draft decoding (the library's) vs torchvision.io at full size; nvJPEG."""
    import torchvision.io as tio
    import torchvision.transforms.v2.functional as F

    from b4transfer.data.images import load_rgb
    from b4transfer.data.transforms import draft_size_for, uint8_eval_transform

    eval_cfg = module.data_config["eval"]
    side_px, tf, draft = eval_cfg["input_size"][-1], uint8_eval_transform(eval_cfg), draft_size_for(eval_cfg)
    bicubic = F.InterpolationMode.BICUBIC

    def tv(image: torch.Tensor) -> torch.Tensor:
        return F.center_crop(F.resize(image, side_px, interpolation=bicubic, antialias=True), side_px)

    rates = {
        "pil_draft": lambda: [tf(load_rgb(q, draft_size=draft)) for q in paths],
        "torchvision_io": lambda: [tv(tio.decode_jpeg(tio.read_file(str(q)))) for q in paths],
    }
    if dev.type == "cuda":
        rates["nvjpeg_batch"] = lambda: [tv(x) for x in tio.decode_jpeg(
            [tio.read_file(str(q)) for q in paths], device="cuda")]
    out = {}
    for name, fn in rates.items():
        try:
            fn()
            out[f"decode_{name}_images_per_s"] = round(len(paths) / min(timed(fn) for _ in range(2)), 2)
        except Exception as err:  # e.g. a torchvision without nvJPEG: say so, keep the others
            out[f"decode_{name}_error"] = f"{type(err).__name__}: {err}"[:200]
    return out


def run(p: dict, *, device: str = "cpu") -> Result:
    from b4transfer import tasks
    from b4transfer.runtime.cache import RuntimeCache
    from b4transfer.runtime.choice import choose
    from b4transfer.runtime.inference import InferenceSettings
    from b4transfer.tasks.classification import ClassificationModule
    from b4transfer.tasks.classification.predict import run_inference

    torch.manual_seed(0)
    dev = torch.device(device)
    module = ClassificationModule(class_names=["a", "b"], model={"name": p["model"], "pretrained": False},
                                  data=p.get("data")).eval()
    cfg = _config(p, dev)
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_jpegs(Path(tmp), p["images"], size=tuple(p["photo_size"]))
        cache = RuntimeCache(Path(tmp) / "runtimes", {"checkpoint": "benchmark"})
        cache.folder.mkdir()
        module.runtime_choice = choose(cfg, tasks.get("classification"), module, paths=paths,
                                       calibration=paths, cache=cache)
        uint8, float32 = _loaders(cfg, module, paths, p, dev)
        model = _model_step(cfg, module, module.runtime_choice, list(DataLoader(uint8.dataset,
                                                                   batch_size=p["batch_size"])), dev)
        kwargs = {"accelerator": cfg.trainer.accelerator, "enable_progress_bar": False}
        settings = InferenceSettings(check_agreement=0)

        def full() -> float:
            with quiet():
                return timed(lambda: run_inference(module, uint8, settings=settings, trainer_kwargs=kwargs))

        sides = {"full": full, "model": model, "pipeline": lambda: _drain(uint8, dev),
                 "pipeline_float32": lambda: _drain(float32, dev)}
        samples = interleaved(sides, rounds=p["rounds"], warmup=1)
        sync()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            decode = _decode_rates(paths[: p.get("decode_images", 8)], module, dev)
        finally:
            torch.set_num_threads(threads)
    return _result(p, dev, module, samples, decode)


def _result(p: dict, dev: torch.device, module, samples: dict, decode: dict) -> Result:
    n = p["images"]
    ips = {k: [n / s for s in v] for k, v in samples.items()}
    rate = {k: median(v) for k, v in ips.items()}
    report = module.runtime_choice.report
    bound = "input pipeline" if rate["pipeline"] < rate["model"] else "model"
    per_worker = rate["pipeline"] / max(1, p["workers"])
    eval_size = module.data_config["eval"]["input_size"][-1]
    return Result(
        name="predict_pipeline" if dev.type == "cpu" else "gpu_predict_pipeline",
        title=f"Prediction input pipeline vs the model ({dev.type}): full mode=predict path / model alone, "
              f"{p['model']} @ {eval_size} from {p['photo_size'][0]}x{p['photo_size'][1]} JPEGs",
        settings={"model": p["model"], "image_size": eval_size, "images": n, "photo_size": p["photo_size"],
                  "batch_size": p["batch_size"], "workers": p["workers"], "pin_memory": dev.type == "cuda",
                  "device": dev.type, "runtime": report.get("used"), "rounds": p["rounds"]},
        library=side(ips["full"], "images/s"),
        baseline=side(ips["model"], "images/s"),
        ratio=ratio_of_rounds(ips["full"], ips["model"]),
        ratio_kind="images/s, full predict path / the model alone on decoded batches",
        target=p.get("target", ">= 0.9"),
        extra={"pipeline_images_per_s": round(rate["pipeline"], 2),
               "pipeline_float32_images_per_s": round(rate["pipeline_float32"], 2),
               "model_images_per_s": round(rate["model"], 2),
               "full_path_images_per_s": round(rate["full"], 2),
               "bound": bound, "workers_to_feed_model": round(rate["model"] / per_worker, 2),
               "runtime_reason": report.get("reason"), **decode},
    ).check()
