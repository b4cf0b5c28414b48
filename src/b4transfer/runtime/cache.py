"""The exports ``predict.runtime`` runs, kept beside the checkpoint and reused by the next run.

``<checkpoint's folder>/runtimes/<checkpoint stem>/<sha256[:16]>-<image size>px/`` holds the task's
``model.onnx`` (onnxruntime), ``model.xml`` + ``model.bin`` (OpenVINO) and ``model_int8.onnx`` as they
are first needed, and ``runtime_cache.json``, which says what was built, from which checkpoint (its
hash: a retrained ``last.ckpt`` gets a new folder) and how. Each artefact is built in a temporary folder
inside and moved into place (``os.replace``), then recorded; only recorded artefacts are reused, so an
interrupted build is built again. A folder there that this library did not make is never written to:
the run then builds in its own run directory (not reused), and says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from b4transfer import __version__
from b4transfer.export.timm_format import atomic_write
from b4transfer.runtime.runtimes import RUNTIME_FILES

log = logging.getLogger(__name__)

MARKER_NAME = "runtime_cache.json"
# the files each export format writes (OpenVINO's weights beside its XML)
FILES = {"onnx": ("model.onnx",), "openvino": ("model.bin", "model.xml"), "onnx_int8": ("model_int8.onnx",)}


def file_digest(path: str | Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


class RuntimeCache:
    """A folder of exports of one checkpoint at one image size (see the module docstring).

    Args:
        folder: Where the exports live.
        key: What they were built from (``checkpoint``, ``sha256``, ``image_size``).
        note: Why the folder is not the one beside the checkpoint (``None``: it is).
    """

    def __init__(self, folder: Path, key: dict[str, Any], note: str | None = None) -> None:
        self.folder, self.key, self.note = Path(folder), key, note

    @classmethod
    def beside(cls, ckpt: str | Path, image_size: int, run_dir: str | Path) -> RuntimeCache:
        """The cache beside ``ckpt``, else (a folder not ours, no write access) one in ``run_dir``."""
        ckpt = Path(ckpt)
        digest = file_digest(ckpt)
        key = {"checkpoint": str(ckpt.resolve()), "sha256": digest, "image_size": int(image_size)}
        name = f"{digest}-{int(image_size)}px"
        folder = ckpt.parent / "runtimes" / ckpt.stem / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            marker = folder / MARKER_NAME
            if any(folder.iterdir()) and not _ours(marker):
                raise PermissionError(f"{folder} holds files this library did not write")
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"{folder} is not writable")
            if not marker.is_file():
                _write_json(marker, {"b4transfer_version": __version__, **key, "built": {}})
            return cls(folder, key)
        except OSError as err:
            fallback = Path(run_dir) / "runtimes" / name
            fallback.mkdir(parents=True, exist_ok=True)
            _write_json(fallback / MARKER_NAME, {"b4transfer_version": __version__, **key, "built": {}})
            note = f"exports built in the run directory, not reused ({err})"
            log.warning("predict.runtime: %s", note)
            return cls(fallback, key, note)

    def built(self) -> dict[str, Any]:
        """What the marker records as built: ``{format: {"seconds", ...}}``."""
        try:
            return dict(json.loads((self.folder / MARKER_NAME).read_text()).get("built") or {})
        except (OSError, ValueError):
            return {}

    def path(self, fmt: str) -> Path:
        return self.folder / RUNTIME_FILES[fmt]

    def ensure(self, fmt: str, build, calibration: Sequence[Path] = ()) -> tuple[Path, bool]:
        """The export ``fmt`` (``onnx``, ``openvino``, ``onnx_int8``): reused when recorded, else made by
        ``build(fmt, out_dir)`` in a temporary folder and moved in. Returns ``(path, reused)``."""
        if fmt in self.built() and all((self.folder / f).is_file() for f in FILES[fmt]):
            return self.path(fmt), True
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".build-") as tmp:
            onnx = self.folder / "model.onnx"
            if fmt != "onnx" and "onnx" in self.built() and onnx.is_file():
                shutil.copy2(onnx, Path(tmp) / onnx.name)  # OpenVINO / INT8 start from the checked ONNX
            build(fmt, Path(tmp))
            for name in FILES[fmt]:
                os.replace(Path(tmp) / name, self.folder / name)
            made_onnx = fmt != "onnx" and (Path(tmp) / onnx.name).is_file() and "onnx" not in self.built()
            if made_onnx:  # built on the way: keep it for onnxruntime too
                os.replace(Path(tmp) / onnx.name, onnx)
        record = {"seconds": round(time.perf_counter() - start, 2), "built_utc": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if fmt == "onnx_int8":
            record["calibration_images"] = len(calibration)
        self._record({fmt: record, **({"onnx": record} if made_onnx else {})})
        log.info("predict.runtime: built %s in %.1f s (%s)", fmt, record["seconds"], self.folder)
        return self.path(fmt), False

    def _record(self, entries: dict[str, Any]) -> None:
        marker = self.folder / MARKER_NAME
        data = json.loads(marker.read_text()) if marker.is_file() else {"b4transfer_version": __version__,
                                                                         **self.key}
        data["built"] = {**(data.get("built") or {}), **entries}
        _write_json(marker, data)


def _ours(marker: Path) -> bool:
    try:
        return "b4transfer_version" in json.loads(marker.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=2) + "\n"))
