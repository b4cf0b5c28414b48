"""Fast inference for ``mode=predict`` / ``mode=embed``: channels_last, bf16 autocast, torch.compile.

Prediction (each task's ``run_inference``) runs ``Trainer.predict`` with

- **bf16 autocast** (Lightning's ``precision="bf16-mixed"``) where the hardware computes bf16 natively
  (``predict.precision=auto``: CPUs with AVX512-BF16 / AMX, CUDA GPUs with bf16 support; emulated
  bf16 on other CPUs is slower than fp32, so ``auto`` keeps fp32 there);
- **channels_last** weights (``predict.channels_last``): oneDNN and cuDNN run NHWC convolutions
  faster, and the first convolution turns NCHW input into NHWC activations for the whole network;
- optionally **torch.compile** of the backbone (``predict.compile``; the first batch pays the
  compilation).

Reduced precision changes the outputs slightly, so the first ``predict.check_agreement`` images are
run again in fp32 eager (NCHW, no autocast) and the top-1 agreement (multi-label: agreement of every
label's decision at 0.5; embeddings: the smallest cosine similarity) and the largest absolute
difference are reported in ``summary.json``, with a warning when agreement falls below 99 %.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from b4transfer.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "32")
MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class InferenceSettings:
    """How prediction runs (the ``predict.*`` keys of the config)."""

    precision: str = "auto"  # auto | bf16 | 32
    channels_last: bool = True  # NHWC weights
    compile: bool = False  # torch.compile the backbone
    check_agreement: int = 16  # images re-run in fp32 eager for the agreement report; 0: off

    @classmethod
    def from_config(cls, predict: Mapping[str, Any] | None) -> InferenceSettings:
        """Validated settings from the ``predict`` config section (missing keys: defaults)."""
        predict = dict(predict or {})
        precision = str(predict.get("precision", cls.precision)).lower()
        if precision not in PRECISIONS:
            raise UserError(
                f"predict.precision={predict.get('precision')!r} is not supported; use one of "
                f"{', '.join(PRECISIONS)} (auto: bf16 where the hardware runs it natively, else 32)."
            )
        for key in ("channels_last", "compile"):
            if not isinstance(predict.get(key, False), bool):
                raise UserError(f"predict.{key} must be true or false, got {predict[key]!r}.")
        check = predict.get("check_agreement", cls.check_agreement)
        if isinstance(check, bool) or not isinstance(check, numbers.Integral) or check < 0:
            raise UserError(
                f"predict.check_agreement must be a number of images >= 0 (0: no check), got {check!r}."
            )
        return cls(
            precision=precision,
            channels_last=predict.get("channels_last", cls.channels_last),
            compile=predict.get("compile", cls.compile),
            check_agreement=int(check),
        )


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 convolutions natively (so bf16 autocast is a speed-up)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where :func:`bf16_native`, else ``32``; explicit values pass through."""
    if precision == "auto":
        return "bf16" if bf16_native(device) else "32"
    if precision == "bf16" and not bf16_native(device):
        log.warning(
            "predict.precision=bf16 on %s, which has no native bf16: it is emulated and likely slower "
            "than fp32. HINT: predict.precision=auto picks fp32 here.",
            device,
        )
    return precision


@contextlib.contextmanager
def fast_model(module: L.LightningModule, *, channels_last: bool, compile: bool) -> Iterator[None]:
    """Temporarily convert ``module`` to channels_last and/or compile its backbone."""
    backbone = module.backbone
    try:
        if channels_last:
            module.to(memory_format=torch.channels_last)
        if compile:
            module.backbone = torch.compile(backbone)
        yield
    finally:
        module.backbone = backbone
        if channels_last:
            module.to(memory_format=torch.contiguous_format)


def predict_trainer_setup(
    settings: InferenceSettings, trainer_kwargs: Mapping[str, Any] | None
) -> tuple[dict[str, Any], torch.device, str]:
    """``(Trainer kwargs, device, resolved precision)`` for a one-device prediction run (fp32 Trainer)."""
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False,
              **dict(trainer_kwargs or {}), "devices": 1, "strategy": "auto", "precision": "32-true"}
    on_gpu = torch.cuda.is_available() and kwargs.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if on_gpu else "cpu")
    return kwargs, device, resolve_precision(settings.precision, device)


def output_names(paths: list[Path], source, suffix: str = ".png") -> list[Path]:
    """Where each input's output file goes, relative to an output folder: unique, and stable for a given
    ``predict.input``.

    The image's path relative to ``source`` (a folder: sub-folders kept), else its name, with its
    extension replaced by ``suffix`` — unless two inputs would share that name (``x.jpg`` and ``x.png``):
    those keep their own extension before ``suffix`` (``x.jpg.png``, ``x.png.png``). Names that would
    still clash (also by letter case, for case-insensitive file systems) get ``-2``, ``-3``... in path
    order.
    """
    root = Path(source).expanduser() if source not in (None, "") else None
    rel = [
        p.relative_to(root) if root is not None and root.is_dir() and p.is_relative_to(root) else Path(p.name)
        for p in paths
    ]
    stems = [str(r.with_suffix("")).casefold() for r in rel]
    count = Counter(stems)
    names = [
        r.with_suffix(suffix) if count[stem] == 1 else r.with_name(r.name + suffix)
        for r, stem in zip(rel, stems)
    ]
    taken: set[str] = set()
    out = []
    for name in names:
        unique, n = name, 1
        while str(unique).casefold() in taken:
            n += 1
            unique = name.with_name(f"{name.stem}-{n}{suffix}")
        taken.add(str(unique).casefold())
        out.append(unique)
    return out


def run_predict(choice, module, loader) -> list:
    """``module.predict_step`` over ``loader`` through ``choice``'s runtime (a
    :class:`~b4transfer.runtime.choice.Choice`), on the CPU: the per-batch outputs, as ``Trainer.predict``
    returns them."""
    module.eval()
    with choice.patch(module), torch.inference_mode():
        return [module.predict_step(batch, i) for i, batch in enumerate(loader)]


def predict_outputs(
    module: L.LightningModule,
    loader,
    *,
    settings: InferenceSettings,
    trainer_kwargs: Mapping[str, Any] | None = None,
    bf16_context: Callable[[L.LightningModule, str], contextlib.AbstractContextManager] | None = None,
) -> tuple[list, dict[str, Any], torch.device | None]:
    """``module.predict_step`` over ``loader`` as ``mode=predict`` runs it: through the export that
    ``predict.runtime`` chose (on the CPU; its agreement was measured when it was chosen), else by a
    Lightning ``Trainer`` with the fast settings.

    Args:
        module: The task's module (``runtime_choice`` set when ``predict.runtime`` chose an export).
        loader: The prediction batches.
        settings: Precision, memory format, compilation, agreement check.
        trainer_kwargs: More ``lightning.Trainer`` arguments (``accelerator``, ``default_root_dir``...).
        bf16_context: ``bf16_context(module, device_type)`` runs the part of the model that bf16 suits
            (detection: the body); ``None``: all of it, by Lightning's ``bf16-mixed`` precision.

    Returns:
        ``(outputs, report, check_on)``: the per-batch outputs as ``Trainer.predict`` gives them, the
        report (runtime, precision, device, settings), and the device to check the agreement with fp32
        eager on where that is due (``predict.check_agreement`` with bf16 or compilation), else ``None``.
    """
    choice = getattr(module, "runtime_choice", None)
    if choice is not None and choice.exported:  # predict.runtime: the export, run by its own runtime
        outputs = run_predict(choice, module, loader)
        report = {"runtime": choice.name, "device": "cpu", "check_agreement": settings.check_agreement}
        if choice.agreement is not None:
            report["agreement_vs_fp32"] = choice.agreement
        return outputs, report, None
    kwargs, device, precision = predict_trainer_setup(settings, trainer_kwargs)
    bf16 = contextlib.nullcontext()
    if bf16_context is None:
        kwargs["precision"] = "bf16-mixed" if precision == "bf16" else "32-true"
    elif precision == "bf16":
        bf16 = bf16_context(module, device.type)
    trainer = L.Trainer(**kwargs)
    with fast_model(module, channels_last=settings.channels_last, compile=settings.compile), bf16:
        outputs = trainer.predict(module, dataloaders=loader)
    report = {**asdict(settings), "runtime": "torch", "precision": precision, "device": device.type}
    check = settings.check_agreement and (precision != "32" or settings.compile)
    return outputs, report, device if check else None
