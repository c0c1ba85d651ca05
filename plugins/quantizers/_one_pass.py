"""Activation fake quantization in one pass over memory on CPU, bit for bit the eager form.

The eager quantize-dequantize of :class:`~zsqbench_plugins.quantizers._fake_quant.FakeQuantSTE` reads and
writes the whole activation six times (``x·S``, ``−Z``, round, clamp, ``+Z``, ``/S``). At batch 200 the
19 activation quantizers of ResNet-20 spend ~31 ms a step there, memory traffic rather than arithmetic
(benchmarks/README.md). Compiled by ``torch.compile`` (inductor's C++ backend) the same expression is one
loop that reads ``x`` once and writes the result once, ~3x faster.

Why the result is the same tensor, not merely close: every output element depends only on its own input
element, and the compiled loop applies the same IEEE operations in the same order (inductor compiles
with ``-ffp-contract=off`` and without unsafe math, so no fused multiply-add and no division turned into
a multiplication; ``round`` is round-half-to-even as ``torch.round``). tests/plugins/test_one_pass.py
checks it on random values, exact .5 ties, both clamp edges and odd shapes.

Used only where it pays and cannot surprise: CPU tensors of at least :data:`MIN_ELEMENTS` (a smoke
trial's batch of 16 never compiles, so short runs and the test suite pay no compilation), outside a
compiled iteration (``--compile`` fuses these operations itself) and never under
``ZSQBENCH_REFERENCE_KERNELS=1``. Where compilation fails (no C++ compiler, an unsupported platform) the
first failure is reported once and the eager form is used from then on: the values are the same.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import torch
from torch import Tensor

from zsqbench.toolkit.reference import use_reference

#: The smallest activation (elements) that takes the compiled loop: batch 200 of ResNet-20's smallest
#: activations (200·64·8·8 = 819,200) does, a batch of 16 (at most 16·16·32·32 = 262,144) does not.
MIN_ELEMENTS = 1 << 19

_Kernel = Callable[[Tensor, Tensor, Tensor, int], Tensor]
#: None: not built yet; False: unavailable in this process (compilation failed or was refused)
_kernel: _Kernel | None | bool = None


def _quantize_dequantize(x: Tensor, scale: Tensor, zero: Tensor, half: int) -> Tensor:
    """``(clamp(round(x·S − Z), −half, half − 1) + Z) / S``: the operations of ``_codes_on_grid`` then
    ``.add_(Z).div_(S)``, in their order, as one expression for the compiler to fuse."""
    return ((x * scale - zero).round().clamp(-half, half - 1) + zero) / scale


def _build() -> _Kernel | bool:
    if use_reference():
        return False
    # a CUDA wheel on a machine without a GPU warns once about CUDA_HOME when inductor loads; not ours to show
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(_quantize_dequantize, dynamic=True, fullgraph=True)


def applies(x: Tensor) -> bool:
    """Whether ``x`` takes the compiled loop (see the module doc); cheap, called at every forward."""
    return (_kernel is not False and x.device.type == "cpu" and x.numel() >= MIN_ELEMENTS
            and not torch.compiler.is_compiling())


def quantize_dequantize(x: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor | None:
    """The fake-quantized ``x`` (compute dtype, per-tensor 0-dim ``scale``/``zero``) from the compiled loop,
    or None where it is unavailable (the caller then takes the eager form)."""
    global _kernel
    if _kernel is None:
        _kernel = _build()
    if _kernel is False:
        return None
    try:
        with torch.no_grad():
            return _kernel(x, scale, zero, 2 ** (bits - 1))  # type: ignore[operator]
    except Exception as error:  # noqa: BLE001 — any compiler failure: the eager form gives the same values
        _kernel = False
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        warnings.warn(f"one-pass fake quantization unavailable ({type(error).__name__}: {first_line}); "
                      "using the eager form, same values, slower at large batches", RuntimeWarning, stacklevel=2)
        return None


def disable() -> None:
    """Use the eager form from now on in this process (tests; a user who wants no compiler involved)."""
    global _kernel
    _kernel = False


def reset() -> None:
    """Forget the build decision (tests)."""
    global _kernel
    _kernel = None
