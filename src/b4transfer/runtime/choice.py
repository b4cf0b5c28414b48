"""``predict.runtime``: which runtime runs ``mode=predict`` (and, when asked, ``mode=validate|test``).

- ``torch`` (the default): the PyTorch model with the ``predict.*`` fast settings
  (:mod:`b4transfer.runtime.inference`), as before;
- ``onnxruntime`` / ``openvino`` / ``onnx_int8``: the task's own export (``model.onnx``, OpenVINO IR,
  static INT8 ONNX), built on first use beside the checkpoint and reused after
  (:mod:`b4transfer.runtime.cache`), run on the CPU by that runtime;
- ``auto``: each runtime the task exports to and this machine can run, and torch, run the first
  ``predict.check_agreement`` images (timed after one warm-up pass, images already decoded); those whose
  outputs agree with fp32 eager PyTorch on them (what the task's agreement measure compares: top-1
  labels, boxes, pixel classes; the ``predict.check_agreement`` measures, at least 99 %) compete, and the
  fastest runs the whole input. INT8 is one of them: it runs only where its measured agreement holds.
  A runtime that cannot run (package missing, no export for the task, ``tta=``, ``mode=embed``, a GPU
  run) or that disagrees is passed over, the reason recorded; torch is the last resort.

An explicitly named runtime that cannot run as asked is refused before any work (:func:`check_runtime`);
one that runs but disagrees is used as asked, with a warning, as ``predict.precision=bf16`` is.
``summary.json`` -> ``runtime`` says which ran and why (every candidate's images/s and agreement, each
fallback's reason, the export folder).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from b4transfer.config import conf_default, plain
from b4transfer.errors import MissingDependencyError, NotSupportedError, UserError
from b4transfer.runtime.cache import RuntimeCache
from b4transfer.runtime.inference import MIN_AGREEMENT, InferenceSettings, fast_model, predict_trainer_setup
from b4transfer.runtime.runtimes import open_runtime

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino", "onnx_int8")
CHOICES = ("auto", *RUNTIMES)
AUTO_ORDER = ("onnxruntime", "openvino", "onnx_int8")  # tried by auto, then torch
EXPORTS = {"onnxruntime": "onnx", "openvino": "openvino", "onnx_int8": "onnx_int8"}  # export.format
PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "onnxruntime", "openvino"),
            "onnx_int8": ("onnx", "onnxruntime")}
MODES = ("predict", "embed", "validate", "test")


class RuntimeAdapter:
    """How a task's exports run in place of its PyTorch model; a task sets ``runtime_adapter`` to one.

    Attributes:
        runtimes: The runtimes of :data:`RUNTIMES` the task exports to (torch aside).
        collate: The prediction DataLoader's ``collate_fn`` (``None``: PyTorch's default).
    """

    runtimes: tuple[str, ...] = ()
    collate: Callable | None = None

    def image_size(self, module) -> int:
        """The exported input side (part of the export cache's key)."""
        raise NotImplementedError

    def dataset(self, cfg: DictConfig, module, paths: Sequence[Path]):
        """The prediction dataset of ``paths`` (what ``module.predict_step`` takes, batched)."""
        raise NotImplementedError

    def build(self, fmt: str, module, out_dir: Path, *, calibration: Sequence[Path], opset: int) -> None:
        """Write export ``fmt`` (``onnx``, ``openvino``, ``onnx_int8``) of ``module`` into ``out_dir``."""
        raise NotImplementedError

    def patch(self, module, run: Callable) -> contextlib.AbstractContextManager:
        """While open, ``module``'s eval forward and ``predict_step`` compute through ``run`` (the
        export's ``{input: array} -> [outputs]``), on the CPU."""
        raise NotImplementedError

    @contextlib.contextmanager
    def torch_context(self, module, *, settings: InferenceSettings, precision: str, device) -> Iterator[None]:
        """While open, ``module.predict_step`` runs the PyTorch fast path (as ``mode=predict`` does): here
        the whole model under bf16 autocast when ``precision`` is ``bf16``."""
        bf16 = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with fast_model(module, channels_last=settings.channels_last, compile=settings.compile), bf16:
            yield

    def compare(self, cfg: DictConfig, module, reference: list, fast: list) -> dict[str, Any]:
        """Agreement of ``fast`` with the fp32 eager ``reference`` (``predict_step`` outputs per batch):
        the task's measure, with ``agreement`` (0..1) among the keys."""
        raise NotImplementedError


@dataclass
class Choice:
    """The runtime that runs (``run`` is ``None`` for torch), and the summary's ``runtime`` report."""

    name: str
    report: dict[str, Any]
    run: Callable | None = None
    adapter: RuntimeAdapter | None = field(default=None, repr=False)

    @property
    def exported(self) -> bool:
        return self.run is not None

    def patch(self, module) -> contextlib.AbstractContextManager:
        """``module`` computing through this runtime (a no-op for torch)."""
        return self.adapter.patch(module, self.run) if self.exported else contextlib.nullcontext()

    @property
    def agreement(self) -> dict[str, Any] | None:
        return (self.report.get("candidates") or {}).get(self.name, {}).get("agreement")


def requested(cfg: DictConfig) -> str:
    """The checked ``predict.runtime`` (``torch`` when unset)."""
    value = (cfg.get("predict") or {}).get("runtime") or "torch"
    if value not in CHOICES:
        raise UserError(
            f"predict.runtime={value!r} is not a runtime; use one of {', '.join(CHOICES)} "
            "(docs/modes/predict-embed.md: auto picks the fastest that agrees with PyTorch)."
        )
    return value


def missing_package(name: str) -> str | None:
    """Why ``name`` cannot be imported here (``None``: it can)."""
    for package in PACKAGES.get(name, ()):
        try:
            importlib.import_module(package)
        except ImportError as err:
            return f"the {package} package is not installed ({err})"
    return None


def cannot_run(name: str, task, cfg: DictConfig, *, device: str = "cpu") -> str | None:
    """Why runtime ``name`` cannot run this job (``None``: it can). ``device``: where torch would run."""
    adapter = getattr(task, "runtime_adapter", None)
    if adapter is None or name not in adapter.runtimes:
        exported = ", ".join(adapter.runtimes) if adapter else "none"
        return f"task={task.name} has no {name} export (its exported runtimes: {exported})"
    if cfg.get("tta") not in (None, "", "null"):
        return f"tta={cfg.tta}: the exported model has no test-time augmentation"
    if cfg.mode == "embed":
        return "mode=embed: the exported model gives the task's outputs, not embeddings"
    if device == "cuda":
        return "the exported runtimes run on the CPU and this run has a GPU"
    return missing_package(name)


def check_runtime(cfg: DictConfig, task) -> str:
    """Refuse, before any work, a ``predict.runtime`` that cannot run as asked; returns it."""
    name = requested(cfg)
    if name == "torch" or cfg.get("mode") not in MODES:
        return name
    if name == "auto":
        if (cfg.get("predict") or {}).get("check_agreement", 16) == 0:
            raise UserError(
                "predict.runtime=auto needs predict.check_agreement >= 1: it keeps only the runtimes whose "
                "outputs agree with fp32 PyTorch on that many images. Fix: predict.check_agreement=16, or "
                "name a runtime (e.g. predict.runtime=onnxruntime)."
            )
        return name
    reason = cannot_run(name, task, cfg)
    if reason and missing_package(name) == reason:
        raise MissingDependencyError(
            f"predict.runtime={name} needs {', '.join(PACKAGES[name])}: {reason}. Fix: pip install "
            f'"b4transfer[{"openvino" if name == "openvino" else "onnx"}]", or predict.runtime=auto (which '
            "passes over what is missing)."
        )
    if reason:
        raise NotSupportedError(
            f"predict.runtime={name} cannot run this job: {reason}. Fix: predict.runtime=torch, or "
            "predict.runtime=auto (which falls back to torch)."
        )
    return name


def choose(
    cfg: DictConfig,
    task,
    module,
    *,
    paths: Sequence[Path],
    calibration: Sequence[Path] = (),
    ckpt: str | Path | None = None,
    run_dir: str | Path = ".",
    cache: RuntimeCache | None = None,
) -> Choice:
    """The runtime for this job (see the module docstring); ``paths``: the images (the first
    ``predict.check_agreement`` are the sample), ``calibration``: INT8's calibration images; the
    exports are cached beside ``ckpt`` unless ``cache`` is given."""
    name = requested(cfg)
    if name == "torch":
        return Choice("torch", {"requested": "torch", "used": "torch", "reason": "predict.runtime=torch"})
    settings = InferenceSettings.from_config(plain(cfg.predict))
    _, device, precision = predict_trainer_setup(settings, plain(cfg.trainer))
    names = list(AUTO_ORDER) if name == "auto" else [name]
    where = device.type if name == "auto" else "cpu"  # a named runtime runs on the CPU even beside a GPU
    fallbacks = {n: r for n in names if (r := cannot_run(n, task, cfg, device=where))}
    report: dict[str, Any] = {"requested": name, "candidates": {}, "fallbacks": fallbacks}
    if len(fallbacks) == len(names):  # auto only: an explicit runtime that cannot run was refused
        return _decide(report, "torch", None, None, why=f"no exported runtime can run: {_first(fallbacks)}")
    adapter = task.runtime_adapter
    cache = cache or RuntimeCache.beside(ckpt, adapter.image_size(module), run_dir)
    trial = _Trial(cfg, adapter, module, report, cache)
    trial.sample(paths[: settings.check_agreement], device)
    for runtime in (r for r in names if r not in fallbacks):
        trial.export(runtime, calibration, timed=name == "auto", strict=name != "auto")
    if name != "auto":
        return _decide(report, name, trial.runners[name], adapter, why="asked for (predict.runtime)")
    trial.torch(adapter.torch_context(module, settings=settings, precision=precision, device=device), device,
                {"precision": precision, "device": device.type})
    return _pick(report, trial.runners, adapter)


class _Trial:
    """The candidates run on one sample: each one's outputs against fp32 PyTorch's, and its speed."""

    def __init__(self, cfg: DictConfig, adapter: RuntimeAdapter, module, report: dict, cache: RuntimeCache):
        self.cfg, self.adapter, self.module, self.report, self.cache = cfg, adapter, module, report, cache
        self.runners: dict[str, Callable] = {}
        self.batches: list = []
        self.reference: list | None = None
        report.update(cache=str(cache.folder), **({"cache_note": cache.note} if cache.note else {}))

    def sample(self, paths: Sequence[Path], device) -> None:
        """Decode ``paths`` once (prediction's dataset and batch size) and run fp32 eager PyTorch on them."""
        self.report["sample_images"] = len(paths)
        self.module.eval()
        if paths:
            cfg = self.cfg
            batch_size = int((cfg.get("predict") or {}).get("batch_size") or cfg.data.batch_size)
            dataset = self.adapter.dataset(cfg, self.module, paths)
            self.batches = list(DataLoader(dataset, batch_size=batch_size, collate_fn=self.adapter.collate))
            self.reference = _measure(self.module, self.batches, device, contextlib.nullcontext())[0]

    def export(self, runtime: str, calibration: Sequence[Path], *, timed: bool, strict: bool) -> None:
        """Build or reuse ``runtime``'s export and run the sample through it; a failure is a fallback
        (``strict``: raised)."""
        try:
            self.runners[runtime] = self._open(runtime, calibration)
        except Exception as err:
            if strict:
                raise
            self.report["fallbacks"][runtime] = f"its export failed: {type(err).__name__}: {_line(err)}"
            return
        context = self.adapter.patch(self.module, self.runners[runtime])
        self._run(runtime, context, torch.device("cpu"), timed=timed)

    def torch(self, context, device, entry: dict) -> None:
        """Run the sample through the PyTorch fast path (``context``) on ``device``."""
        self.report["candidates"]["torch"] = entry
        self._run("torch", context, device, timed=True)

    def _open(self, runtime: str, calibration: Sequence[Path]) -> Callable:
        export = self.cfg.get("export") or {}
        opset = int(export.get("onnx_opset") or conf_default("export.onnx_opset"))
        count = int(export.get("int8_calibration_images") or conf_default("export.int8_calibration_images"))
        images = list(calibration)[:count]

        def build(fmt: str, out_dir: Path) -> None:
            self.adapter.build(fmt, self.module, out_dir, calibration=images, opset=opset)

        path, reused = self.cache.ensure(EXPORTS[runtime], build, images)
        self.report["candidates"][runtime] = {"artefact": str(path), "reused": reused}
        return open_runtime(EXPORTS[runtime], self.cache.folder, threads=torch.get_num_threads())

    def _run(self, runtime: str, context, device, *, timed: bool) -> None:
        if not self.batches:
            return
        fast, seconds = _measure(self.module, self.batches, device, context, timed=timed)
        entry = self.report["candidates"][runtime]
        entry["agreement"] = self.adapter.compare(self.cfg, self.module, self.reference, fast)
        share = entry["agreement"]["agreement"]
        entry["agrees"] = share is not None and share >= MIN_AGREEMENT
        if seconds:
            entry["images_per_s"] = round(self.report["sample_images"] / seconds, 3)


@torch.inference_mode()
def _measure(module, batches: list, device, context, *, timed: bool = False) -> tuple[list, float | None]:
    """``module.predict_step`` over ``batches`` inside ``context``: the outputs of a first (warm-up) pass
    and, when ``timed``, the seconds of the fastest of the next passes (one, or up to 3 within 0.5 s)."""
    with context:
        module.to(device)

        def one_pass() -> list:
            return [module.predict_step(move_data_to_device(b, device), i) for i, b in enumerate(batches)]

        outputs = one_pass()
        if not timed:
            return outputs, None
        times: list[float] = []
        while not times or (len(times) < 3 and sum(times) < 0.5):
            _sync(device)
            start = time.perf_counter()
            one_pass()
            _sync(device)
            times.append(time.perf_counter() - start)
        return outputs, min(times)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _pick(report: dict, runners: dict, adapter: RuntimeAdapter) -> Choice:
    """The fastest candidate that agrees; torch when none does (the last resort, whatever its own)."""
    candidates, fallbacks, n = report["candidates"], report["fallbacks"], report["sample_images"]
    agreeing = sorted((r for r, e in candidates.items() if e.get("agrees")),
                      key=lambda r: -candidates[r].get("images_per_s", 0.0))
    best = agreeing[0] if agreeing else "torch"
    for runtime, entry in candidates.items():
        if runtime != best and not entry.get("agrees"):
            share = entry["agreement"]["agreement"]
            fallbacks[runtime] = (f"disagrees with fp32 PyTorch: {share:.4f} < {MIN_AGREEMENT} on {n} images"
                                  if share is not None else f"unchecked: no confident outputs in {n} images")
    speeds = ", ".join(f"{r} {candidates[r]['images_per_s']:.1f}" for r in agreeing)
    why = (f"the fastest agreeing with fp32 PyTorch on {n} images (images/s: {speeds})" if agreeing
           else f"no runtime was shown to agree with fp32 PyTorch on {n} images")
    return _decide(report, best, runners.get(best), adapter, why=why)


def _decide(report: dict, used: str, run, adapter, *, why: str) -> Choice:
    report.update(used=used, reason=why)
    passed = "; ".join(f"{r}: {reason}" for r, reason in report["fallbacks"].items())
    log.info("predict.runtime=%s: %s runs, %s%s", report["requested"], used, why,
             f" (passed over: {passed})" if passed else "")
    choice = Choice(used, report, run, adapter)
    share = (choice.agreement or {}).get("agreement")
    if share is not None and share < MIN_AGREEMENT:
        log.warning("predict.runtime=%s agrees with fp32 PyTorch on only %.1f%% of the sample (%s). HINT: "
                    "predict.runtime=auto uses only runtimes that agree.", used, 100 * share,
                    choice.agreement)
    return choice


def _first(fallbacks: dict[str, str]) -> str:
    return "; ".join(f"{r}: {why}" for r, why in fallbacks.items())


def _line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0][:300]


@contextlib.contextmanager
def instance_attrs(obj, **attrs) -> Iterator[None]:
    """Set ``attrs`` on the instance ``obj`` (shadowing its methods) while open; then remove them."""
    for key, value in attrs.items():
        object.__setattr__(obj, key, value)
    try:
        yield
    finally:
        for key in attrs:
            obj.__dict__.pop(key, None)
