"""What every task's exports share: file names, the marker, claiming a directory or file, atomic writes,
the weights + ``config.json`` writer and reader, and the one ONNX path.

Every export b4transfer writes carries :data:`MARKER` (``config.json``'s key, the safetensors and ONNX
metadata): a directory or file without it is the user's, and never overwritten. :func:`write_export` /
:func:`read_export` write and load back ``model.safetensors`` + ``config.json``; :func:`write_onnx` is the
ONNX path of every task: the opset checked (:func:`check_opset`), the graph written atomically, its
metadata stored, the task's onnxruntime check run, and the file removed when that check fails. A task
supplies only what differs: its graph, its metadata and its check.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from b4transfer import __version__
from b4transfer.errors import MissingDependencyError, UserError, UserFileExistsError, UserFileNotFoundError

__all__ = [
    "CHECK_IMAGES", "CONFIG_NAME", "MARKER", "ONNX_NAME", "WEIGHTS_NAME", "atomic_write", "check_inputs",
    "check_opset", "claim_dir", "claim_onnx_file", "export_files", "onnx_metadata", "onnx_session",
    "read_export", "require_onnx", "trace_graph", "write_export", "write_onnx",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ONNX_NAME = "model.onnx"
MARKER = "b4transfer_version"  # present in every config.json / model.onnx we write: the file is ours
OPSETS = range(11, 22)  # the ONNX opsets the exporters are tested with
CHECK_IMAGES = 4  # images an ONNX export is checked on (after training: the first validation images)


# ---------------------------------------------------------------------------------------- files
def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same directory, then ``os.replace`` it into place.

    The file gets the permissions of any file the user creates (``0o666`` less the umask), as
    Lightning's own checkpoints do (``tempfile.mkstemp`` and safetensors' writer make ``0o600``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # the writer may have replaced the file with one of its own
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def claim_dir(out_dir: Path) -> None:
    """Refuse to overwrite export files b4transfer did not write; create ``out_dir``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserFileExistsError(f"export out_dir {out_dir} is a file; choose a directory path.")
    config = out_dir / CONFIG_NAME
    try:
        ours = MARKER in json.loads(config.read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    clash = [p.name for p in (out_dir / WEIGHTS_NAME, config) if p.exists()]
    if clash and not ours:
        raise UserFileExistsError(
            f"export out_dir {out_dir} already holds {', '.join(clash)} not written by b4transfer; refusing "
            "to overwrite it. Choose another out_dir or move those files away."
        )
    out_dir.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------ weights + config.json
def write_export(
    out_dir: str | Path,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
    *,
    write_config: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` (``state``) and ``out_dir/config.json``: ``config`` with the
    marker added, or what ``write_config(path)`` writes (classification: timm's own format). Files
    b4transfer did not write are never overwritten. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    claim_dir(out_dir)
    if write_config is None:
        text = json.dumps({**(config or {}), MARKER: __version__}, indent=2) + "\n"

        def write_config(p: Path) -> None:
            p.write_text(text)

    import safetensors.torch

    atomic_write(out_dir / CONFIG_NAME, write_config)
    atomic_write(
        out_dir / WEIGHTS_NAME,
        lambda p: safetensors.torch.save_file(
            dict(state), str(p), metadata={"format": "pt", MARKER: __version__}
        ),
    )
    return out_dir


def export_files(out_dir: str | Path, writer: str) -> tuple[Path, Path]:
    """``(config.json, model.safetensors)`` of an export directory; a missing one is refused, naming
    ``writer`` (the function that writes such a directory)."""
    out_dir = Path(out_dir)
    config_path, weights = out_dir / CONFIG_NAME, out_dir / WEIGHTS_NAME
    for path in (config_path, weights):
        if not path.is_file():
            raise UserFileNotFoundError(
                f"{path} does not exist; pass the directory {writer} wrote (it holds {WEIGHTS_NAME} and "
                f"{CONFIG_NAME})."
            )
    return config_path, weights


def read_export(
    out_dir: str | Path, *, writer: str, refusal: Callable[[dict, Path], str | None]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state dict)`` of an export :func:`write_export` wrote, on the CPU. ``refusal(config,
    config_path)``: why this is not the kind of export the caller loads (``None``: it is)."""
    config_path, weights = export_files(out_dir, writer)
    config = json.loads(config_path.read_text())
    problem = refusal(config, config_path)
    if problem:
        raise UserError(problem)
    import safetensors.torch

    return config, safetensors.torch.load_file(str(weights), device="cpu")


# --------------------------------------------------------------------------------------- ONNX
def require_onnx():
    """The ``onnx`` and ``onnxruntime`` modules, or the one-line ``pip install`` fix."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(
            f"export.format=onnx needs the onnx and onnxruntime packages ({e}). Fix: "
            'pip install "b4transfer[onnx]" (or pip install onnx onnxruntime).'
        ) from e
    return onnx, onnxruntime


def check_opset(opset: Any) -> int:
    """``opset`` if it is an integer ONNX opset the exporters support (11..21), else refused; ``None``:
    ``export.onnx_opset``'s default (``conf/config.yaml``)."""
    if opset is None:
        from b4transfer.config import conf_default

        opset = conf_default("export.onnx_opset")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise UserError(
            f"export.onnx_opset must be an integer opset in {OPSETS[0]}..{OPSETS[-1]}, got {opset!r}. "
            "Fix: set export.onnx_opset to an integer in that range, or drop the override."
        )
    return opset


def claim_onnx_file(path: Path, onnx) -> None:
    """Refuse an ONNX file b4transfer did not write; create its directory."""
    if path.parent.exists() and not path.parent.is_dir():
        raise UserFileExistsError(f"export out_dir {path.parent} is a file; choose a directory path.")
    if path.exists():
        try:
            props = onnx.load(str(path), load_external_data=False).metadata_props
            ours = any(p.key == MARKER for p in props)
        except Exception:
            ours = False
        if not ours:
            raise UserFileExistsError(
                f"{path} exists and was not written by b4transfer; refusing to overwrite it. Choose another "
                "out_dir or move the file away."
            )
    path.parent.mkdir(parents=True, exist_ok=True)


def trace_graph(
    model: torch.nn.Module,
    dummy: torch.Tensor,
    path: Path,
    opset: int,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> None:
    """``model`` traced on ``dummy`` into ``path`` by PyTorch's TorchScript-based exporter
    (``dynamo=False``: no ``onnxscript`` needed), as every task's ``write_graph`` does."""
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
    )


def write_onnx(
    path: str | Path,
    write_graph: Callable[[Path, int], None],
    *,
    opset: int | None,
    metadata: Mapping[str, Any],
    check: Callable[[Path], dict] | None = None,
) -> dict:
    """The ONNX path of every task: write ``path`` and return ``check(path)`` (``{}`` without one).

    Args:
        path: The ``.onnx`` file; one there that b4transfer did not write is never overwritten.
        write_graph: ``(file, opset)`` -> writes the graph to ``file`` (:func:`trace_graph`).
        opset: ONNX opset, checked by :func:`check_opset` before anything is written (``None``: the
            configured default).
        metadata: Metadata entries, each value stored JSON-encoded (decode with :func:`onnx_metadata`);
            the marker (:data:`MARKER`: the b4transfer version) is added.
        check: Runs the written file with onnxruntime against PyTorch and raises if they disagree; the
            file is then removed, and the error raised.
    """
    onnx, _ = require_onnx()
    opset = check_opset(opset)
    try:
        encoded = {k: json.dumps(v) for k, v in metadata.items()}
    except TypeError as e:
        raise TypeError(f"metadata values must be JSON-serialisable: {e}") from e
    path = Path(path)
    claim_onnx_file(path, onnx)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter's notice
        atomic_write(path, lambda p: write_graph(p, opset))
    proto = onnx.load(str(path))
    for key, value in {**encoded, MARKER: __version__}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write(path, lambda p: onnx.save(proto, str(p)))
    try:
        return check(path) if check is not None else {}
    except Exception:
        path.unlink(missing_ok=True)
        raise


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :func:`write_onnx` stored, JSON values decoded (the marker as the version string)."""
    onnx, _ = require_onnx()
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {k: v if k == MARKER else json.loads(v) for k, v in props.items()}


def onnx_session(path: str | Path):
    """An onnxruntime session of ``path`` on the CPU (the checks compare it with PyTorch fp32 eager)."""
    _, ort = require_onnx()
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_inputs(
    size: int, paths: Sequence[Path] | None, dataset: Callable[[list[Path]], Any]
) -> torch.Tensor:
    """The ``(N, 3, size, size)`` canvases an ONNX export is checked on: the first :data:`CHECK_IMAGES`
    of ``paths`` as ``dataset(paths)`` prepares them (as prediction does), else two seeded noise ones."""
    if not paths:
        return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    data = dataset(list(paths)[:CHECK_IMAGES])
    return torch.stack([data[i][0] for i in range(len(data))])
