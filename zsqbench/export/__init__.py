"""Deployable integer models: a finished trial's student as ONNX, verified in ONNX Runtime.

:mod:`~zsqbench.export.mapping` (the grids of docs/methods/uniform.md#the-quantization-function
-> ONNX quantization parameters, the derivation), :mod:`~zsqbench.export.graph` (the exported
graph), :mod:`~zsqbench.export.runtime` (ONNX Runtime: accuracy, agreement, latency) and
:mod:`~zsqbench.export.trial_export` (a trial folder in, verified files out). Needs the ``export``
extra (onnx, onnxruntime).
"""

from zsqbench.errors import UserError

FORMATS = ("onnx",)
INSTALL_HINT = "pip install 'zsqbench[export]'"


def require_export_extra() -> None:
    """A one-line error naming the install command when onnx or onnxruntime is missing (checked
    before anything is read or written)."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"`zsqbench export` needs {' and '.join(missing)}, which are not installed: {INSTALL_HINT}")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; known formats: {', '.join(FORMATS)}")
    return fmt
