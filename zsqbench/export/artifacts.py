"""What an export writes: sizes, ``quantization.json``, ``weights.npz``, the record beside the trial,
and how the files reach their folder (staged, verified, then moved in; never half-written).

Files are first written (atomically) into a hidden staging folder inside the output folder, the
model is verified from there, and only then is each file moved into place with ``os.replace``,
``quantization.json`` last: it holds the sha256 of the ``model.onnx`` it describes, so a reader can
tell a complete export from one interrupted between two moves. A failed verification removes the
staging folder, leaving the output folder as it was.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from zsqbench.export.graph import ExportedLayer
from zsqbench.files import write_bytes_atomic, write_json_atomic
from zsqbench.runs.result_file import EXPORT_RECORD

MODEL, QUANTIZATION, WEIGHTS = "model.onnx", "quantization.json", "weights.npz"


def model_sizes(model_bytes: bytes, layers: list[ExportedLayer]) -> dict[str, Any]:
    """Bytes of the model's tensors at the true bit-widths (weight codes at k bits, everything else as
    stored: FP32 BN, biases, scales) and as stored, and the file's size."""
    model = onnx.load_from_string(model_bytes)
    codes = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    bits = {f"{layer.path}.codes": layer.quant.bits for layer in layers if layer.kind == "weight"}
    true_bits = stored = 0.0
    quantized = 0
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        stored += array.nbytes
        if tensor.name in codes and array.ndim >= 2:
            k = bits.get(tensor.name, 8 * array.itemsize)
            true_bits += array.size * k / 8
            quantized += array.size
        else:
            true_bits += array.nbytes
    return {"true_bits_bytes": int(round(true_bits)), "stored_tensor_bytes": int(stored),
            "file_bytes": len(model_bytes), "quantized_weights": quantized}


def fp_sizes(model_bytes: bytes) -> dict[str, int]:
    model = onnx.load_from_string(model_bytes)
    return {"tensor_bytes": int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)),
            "file_bytes": len(model_bytes)}


def layer_entries(layers: list[ExportedLayer]) -> list[dict[str, Any]]:
    """Per quantizer: kind, bits, container, ONNX scale(s) and zero point(s), the code range, S and Z
    of docs/methods/uniform.md#the-quantization-function, and for weights the storage at the true
    bit-width and as stored."""
    entries = []
    for layer in layers:
        entry: dict[str, Any] = {"name": layer.path, "kind": layer.kind, **layer.quant.describe()}
        if layer.kind == "weight":
            itemsize = np.dtype(layer.quant.dtype).itemsize
            entry.update(parameters=layer.numel, bytes_at_bits=layer.numel * layer.quant.bits / 8,
                         bytes_stored=layer.numel * itemsize)
        entries.append(entry)
    return entries


def weights_npz(layers: list[ExportedLayer]) -> bytes:
    """Integer weights with their scales and zero points (ONNX's convention, before any BN folding),
    and the activation quantizers' parameters, for users who build their own kernels."""
    arrays: dict[str, np.ndarray] = {}
    for layer in layers:
        if layer.codes is not None:
            arrays[f"{layer.path}.codes"] = layer.codes
        arrays[f"{layer.path}.scale"] = layer.quant.scale
        arrays[f"{layer.path}.zero_point"] = layer.quant.zero_point
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A hidden folder in ``out_dir`` for files not yet verified; removed on the way out, and with it
    any folders created for it that are still empty (a failed export leaves nothing behind)."""
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=out_dir, prefix=".export-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def stage_file(stage: Path, name: str, data: bytes) -> Path:
    path = stage / name
    write_bytes_atomic(path, data)
    return path


def publish(stage: Path, out_dir: Path, document: dict[str, Any], names: list[str]) -> None:
    """Move the verified files into ``out_dir``, then write ``quantization.json`` (the last word).
    A ``weights.npz`` of an earlier export that this one does not write is removed (it would
    describe another model)."""
    if WEIGHTS not in names:
        (out_dir / WEIGHTS).unlink(missing_ok=True)
    for name in names:
        os.replace(stage / name, out_dir / name)
    write_json_atomic(out_dir / QUANTIZATION, document)


def write_record(trial_dir: Path, record: dict[str, Any]) -> None:
    """The export's summary beside the trial (``export/onnx.json``), which the leaderboard reads."""
    write_json_atomic(trial_dir / EXPORT_RECORD, record)
