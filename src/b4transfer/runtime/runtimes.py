"""The exported artefacts' own runtimes: OpenVINO IR and INT8 ONNX made from an exported ``model.onnx``,
and one way to run any of them (:func:`open_runtime`), for the export parity check.

- ``openvino``: ``model.xml`` + ``model.bin`` converted from ``model.onnx`` with ``openvino.convert_model``
  (fp32 weights), run with ``openvino.Core`` on the CPU;
- ``onnx_int8``: ``model_int8.onnx``, ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel
  int8 weights, uint8 activations) calibrated on real images, run with onnxruntime. A detector quantises
  its convolutions but the stem (body, FPN, heads): box decoding, the score threshold and NMS stay float.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from b4transfer.errors import MissingDependencyError

log = logging.getLogger(__name__)

__all__ = ["INT8_NAME", "OPENVINO_NAME", "open_runtime", "quantize_int8", "to_openvino"]

OPENVINO_NAME = "model.xml"
INT8_NAME = "model_int8.onnx"
RUNTIME_FILES = {"onnx": "model.onnx", "openvino": OPENVINO_NAME, "onnx_int8": INT8_NAME}


def require_openvino():
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError(
            f"export.format=openvino needs the openvino package ({e}). Fix: pip install "
            '"b4transfer[openvino]" (or pip install openvino), or drop openvino from export.format.'
        ) from e
    return openvino


def to_openvino(onnx_path: Path, out_dir: Path) -> Path:
    """Convert ``onnx_path`` to OpenVINO IR ``out_dir/model.xml`` (+ ``.bin``), fp32 weights."""
    ov = require_openvino()
    model = ov.convert_model(str(onnx_path))
    out = Path(out_dir) / OPENVINO_NAME
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def quantize_int8(
    onnx_path: Path,
    out_path: Path,
    inputs: Iterable[dict[str, np.ndarray]],
    op_types: Sequence[str] | None = None,
    keep_float: Sequence[str] = (),
) -> Path:
    """Static INT8 quantisation of ``onnx_path`` (QDQ, per-channel weights), calibrated on ``inputs``
    (``{input name: array}`` per batch: real images, preprocessed as the model expects). ``op_types``:
    only these operator types are quantised (``None``: every one onnxruntime can); ``keep_float``: names
    of nodes left in float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(list(inputs))

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        except Exception as e:  # e.g. a graph symbolic shape inference cannot handle: quantise it as is
            log.info("INT8: pre-processing skipped (%s)", e)
            prepared = Path(onnx_path)
        quantize_static(
            str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
            op_types_to_quantize=list(op_types) if op_types else None, nodes_to_exclude=list(keep_float),
        )
    return Path(out_path)


def open_runtime(
    fmt: str, out_dir: Path, threads: int | None = None
) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """``inputs -> outputs`` (in the file's output order) of the exported ``fmt`` file in ``out_dir``,
    run by its own runtime on the CPU (onnxruntime for ``onnx`` / ``onnx_int8``, OpenVINO).
    ``threads``: intra-op threads (``None``: the runtime's default, every core)."""
    path = Path(out_dir) / RUNTIME_FILES[fmt]
    if fmt == "openvino":
        ov = require_openvino()
        # f32: the exported graph as it is. OpenVINO's CPU default is bf16 wherever the CPU has it
        # (AVX512-BF16, AMX): it moved top-1 on 1.6 % of real images of a fine-tuned lite1
        # (scripts/runtime_real_check.py)
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = ov.Core().compile_model(str(path), "CPU", config)

        def run_ov(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
            result = compiled(inputs)
            return [np.asarray(result[out]) for out in compiled.outputs]

        return run_ov
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(None, inputs)
