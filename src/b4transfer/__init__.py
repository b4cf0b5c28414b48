"""b4transfer: fine-tuning and transfer learning around timm's EfficientNet-B4.

The Python API (:mod:`b4transfer.api`) is reachable from the top level, imported on first use (so
``import b4transfer`` and the command line's ``--help`` stay quick)::

    import b4transfer as b4
    run = b4.train(task="classification", data="folder", overrides=["data.root=/data/pets"])
    model = b4.load(run.export_dir)

Three of the API's functions share their name with a sub-package of this package (``b4transfer.export``,
``b4transfer.audit``, ``b4transfer.backbone``), so at the top level they are ``b4.export_checkpoint``,
``b4.audit_data`` and ``b4.load_backbone``; :mod:`b4transfer.api` has them under their short names.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# top-level name -> name in b4transfer.api
_API = {
    "Model": "Model", "Run": "Run", "audit_data": "audit", "build": "build", "embed": "embed",
    "export_checkpoint": "export", "find_checkpoint": "find_checkpoint", "load": "load",
    "load_backbone": "backbone", "lr_find": "lr_find", "predict": "predict", "test": "test",
    "torchvision_backbone": "torchvision_backbone", "train": "train", "validate": "validate",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """The API's names (``b4transfer.train``, ``b4transfer.load``, ...), imported on first use."""
    if name in _API:
        from b4transfer import api

        return getattr(api, _API[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
