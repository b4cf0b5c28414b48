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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
