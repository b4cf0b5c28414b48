"""Where a backbone's starting weights came from, as the exports and the model card state it: random
initialisation (``model.pretrained=false``, no ``model.weights``), a local file (``model.weights=PATH``),
or timm's pretrained weights of a hub tag (``model.pretrained=true``; the tag timm resolves when the name
has none)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from timm.models import get_pretrained_cfg, split_model_name_tag

__all__ = ["describe_origin", "weights_origin"]


def weights_origin(model: dict[str, Any]) -> dict[str, Any]:
    """``{"source": "random"}``, ``{"source": "file", "file", "sha256"}`` or ``{"source": "hub", "name",
    "tag", "hf_hub_id"}`` for the ``model.*`` settings a backbone was built with (``weights`` wins over
    ``pretrained``, as in :func:`~b4transfer.backbone.create_backbone`)."""
    if model.get("weights"):
        path = Path(str(model["weights"])).expanduser().resolve()
        if path.is_dir():  # an export or run directory: the file it gave (b4transfer.backbone.weights)
            from b4transfer.backbone.weights import weights_file

            path = weights_file(path)
        return {"source": "file", "file": str(path), "sha256": _sha256(path)}
    if model.get("pretrained"):
        name = str(model.get("name", ""))
        cfg = get_pretrained_cfg(name)
        tag = (cfg.tag if cfg else None) or split_model_name_tag(name)[1] or None
        arch = split_model_name_tag(name)[0]
        return {"source": "hub", "name": f"{arch}.{tag}" if tag else arch, "tag": tag,
                "hf_hub_id": cfg.hf_hub_id if cfg else None}
    return {"source": "random"}


def describe_origin(origin: dict[str, Any] | None) -> str:
    """One phrase for ``origin`` (``None``: not recorded)."""
    source = (origin or {}).get("source")
    if source == "random":
        return "random initialisation (no pretrained weights)"
    if source == "file":
        digest = f", sha256 `{origin['sha256'][:12]}…`" if origin.get("sha256") else ""
        return f"the local weights file `{Path(origin['file']).name}`{digest}"
    if source == "hub":
        hub = f" (`{origin['hf_hub_id']}`)" if origin.get("hf_hub_id") else ""
        return f"timm's pretrained `{origin['name']}` weights{hub}"
    return "weights of unrecorded origin"


def _sha256(path: Path) -> str | None:
    """The file's SHA-256 (``None`` where it cannot be read any more, e.g. an older checkpoint's file)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
