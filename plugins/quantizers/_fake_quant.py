"""The fake-quantization arithmetic of the ``uniform`` quantizer
(docs/methods/uniform.md#the-quantization-function): grids, the quantize-dequantize in the signed
order, its one-node STE, and the per-output-channel weight form. Kept apart from the modules that
use them (uniform.py) so each file has one job."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor


def grid_of(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """S and Z of the k-bit grid of [lo, hi] (docs/methods/uniform.md#the-quantization-function), by
    the ops :func:`fake_quantize` uses."""
    n = 2**bits - 1
    half = 2 ** (bits - 1)
    scale = n / torch.clamp(hi - lo, min=1e-8)
    zero = torch.round(scale * lo) + half
    return scale, zero


def fake_quantize(x: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize ``x`` onto the k-bit grid of [lo, hi], in the signed order of
    docs/methods/uniform.md#the-quantization-function.

    ``lo``/``hi`` broadcast against ``x``. No gradient: callers wrap it in the STE.
    """
    half = 2 ** (bits - 1)
    scale, zero = grid_of(lo, hi, bits)
    q = torch.clamp(torch.round(scale * x - zero), -half, half - 1)
    return (q + zero) / scale


def weight_grid(weight: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """The integer form of :func:`quantize_weight`'s forward: codes q (int64) and the per-output-channel
    S and Z (shape (C,)), so that ``(q + Z) / S`` is the fake-quantized weight, bit for bit."""
    flat = weight.detach().flatten(1)
    lo, hi = torch.aminmax(flat, dim=1)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    half = 2 ** (bits - 1)
    scale, zero = grid_of(lo.view(shape), hi.view(shape), bits)
    q = torch.clamp(torch.round(scale * weight.detach() - zero), -half, half - 1)
    return q.to(torch.int64), scale.flatten(), zero.flatten()


def ste(x: Tensor, quantized: Tensor) -> Tensor:
    """Forward: the quantized value; backward: the incoming gradient, unchanged.

    The reference formulation (kept for :func:`reference_ste` and the equivalence tests).
    Its forward value is ``x + (q − x)``, which equals ``q`` except at clipped elements,
    where it can be off by one rounding of ``x``; the fused path returns ``q`` itself.
    """
    return x + (quantized - x).detach()


def _codes_into(x: Tensor, lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """The integer stage of :class:`FakeQuantSTE`'s forward: ``clamp(round(x·S − Z))`` in one new
    buffer, with S and Z (the dequantization is ``(q + Z) / S``), for
    :meth:`UniformQuantizer.weight_codes`, by the same functions, so codes and forward cannot drift apart."""
    scale, zero = grid_of(lo, hi, bits)
    return _codes_on_grid(x, scale, zero, bits), scale, zero


def _codes_on_grid(x: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """``clamp(round(x·S − Z))`` in one new buffer, on a grid already computed (:func:`grid_of`).

    With ``.add_(Z).div_(S)`` after it this is :func:`fake_quantize` with one output buffer instead of
    six temporaries: the same operations in the same order on the same dtypes (``q = x·S``, ``−Z``,
    round half-to-even, clamp, ``+Z``, ``/S``), so the result is bit-identical (tested, exact .5 ties
    included); only the allocations go. On CPU, fake quantization plus its STE is ~3x faster this way
    (see benchmarks/README.md).
    """
    half = 2 ** (bits - 1)
    out = x * scale
    return out.sub_(zero).round_().clamp_(-half, half - 1)


class FakeQuantSTE(torch.autograd.Function):
    """Fake quantization with the reference identity STE in one autograd node
    (docs/methods/uniform.md#straight-through-estimator).

    Forward: exactly :func:`fake_quantize` (the signed order of
    docs/methods/uniform.md#the-quantization-function), computed in float32 for reduced-precision
    inputs so ``precision="bf16"`` never quantizes in bf16 (the result is then float32); float32
    and float64 inputs keep their dtype. Backward: the incoming
    gradient unchanged (cast back to the input's dtype), with **no** clipping mask, as the
    reference does; it is differentiable again (zero second derivative, like the reference),
    so Hessian-vector products through the student are unchanged. This replaces
    ``x + (q − x).detach()``, which costs a subtraction, an addition and two autograd
    nodes per quantizer. PyTorch's own ``fake_quantize_per_*_affine`` kernels are not used:
    they were not bit-identical to that signed order in 140 of 200 random cases (they multiply
    by 1/scale and round before subtracting the zero point), their backward masks clipped
    values, and on CPU they were slower than this function.

    One compiled (inductor) loop would do the six passes in one, bit for bit and ~3x faster at batch
    200; it was tried and removed (benchmarks/README.md, 2026-12-05): inductor's FX graph cache served
    a kernel cached by a process under another ``ATEN_CPU_CAPABILITY`` that corrupted the heap.

    ``grid``: the (S, Z) of [lo, hi] already computed in the compute dtype (:func:`frozen_grid`),
    so a quantizer whose range is frozen does not recompute them at every forward; the result is
    the same tensor bit for bit (the same ops on the same values, only earlier).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: Tensor, hi: Tensor, bits: int,  # type: ignore[override]
                grid: tuple[Tensor, Tensor] | None = None) -> Tensor:
        ctx.in_dtype = x.dtype
        scale, zero = grid if grid is not None else frozen_grid(lo, hi, bits, x.dtype)
        return _codes_on_grid(x.to(compute_dtype(x.dtype)), scale, zero, bits).add_(zero).div_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        return grad.to(ctx.in_dtype), None, None, None, None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype fake quantization computes in: float32 for reduced-precision inputs (bf16)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def frozen_grid(lo: Tensor, hi: Tensor, bits: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(S, Z) of [lo, hi] as :class:`FakeQuantSTE` computes them for inputs of ``dtype``."""
    target = compute_dtype(dtype)
    with torch.no_grad():
        return grid_of(lo.to(target), hi.to(target), bits)


_USE_REFERENCE_STE = False


@contextmanager
def reference_ste(enabled: bool = True) -> Iterator[None]:
    """Within this block quantizers use the straightforward ``ste(x, fake_quantize(x))``
    instead of :class:`FakeQuantSTE` (for equivalence tests and debugging)."""
    global _USE_REFERENCE_STE
    previous = _USE_REFERENCE_STE
    _USE_REFERENCE_STE = enabled
    try:
        yield
    finally:
        _USE_REFERENCE_STE = previous


def fake_quantize_ste(x: Tensor, lo: Tensor, hi: Tensor, bits: int, reference: bool = False,
                      grid: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Fake-quantize ``x`` onto the grid of [lo, hi] with an identity STE for ``x``; ``reference``
    (the quantizer's ``ste="reference"``, or inside :func:`reference_ste`) takes the
    straightforward path; ``grid``: [lo, hi]'s (S, Z) from :func:`frozen_grid`, computed once.

    ``lo``/``hi`` must not need gradients (the reference gives m, M, S and Z none).
    """
    if reference or _USE_REFERENCE_STE:
        return ste(x, fake_quantize(x.detach(), lo, hi, bits))
    return FakeQuantSTE.apply(x, lo.detach(), hi.detach(), bits, grid)


class _Precomputed(torch.autograd.Function):
    """The identity STE of :class:`FakeQuantSTE` around a quantized weight computed beforehand
    (:func:`quantize_weights_together`): forward returns that tensor, backward the incoming gradient
    unchanged (cast back to the weight's dtype), as for FakeQuantSTE."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, quantized: list[Tensor]) -> Tensor:  # type: ignore[override]
        ctx.in_dtype = weight.dtype
        return quantized[0]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad.to(ctx.in_dtype), None


def quantize_weights_together(weights: list[Tensor], bits: int) -> list[Tensor]:
    """:func:`quantize_weight` of every weight in ``weights`` (float32 or float64, any shapes), with
    one multi-tensor operation per stage instead of about thirteen operations per weight: the same
    operations on the same values (``n / d`` is ``reciprocal(d)·n``, as Python's reflected division
    of a tensor computes it; ``clamp`` is ``clamp_min`` then ``clamp_max``), so each result equals
    ``quantize_weight(w, bits)`` bit for bit (tests/trial/test_fused_ops.py), with the same identity STE."""
    if not weights:
        return []
    half = 2 ** (bits - 1)
    with torch.no_grad():
        flat = [w.detach().flatten(1) for w in weights]
        ranges = [torch.aminmax(f, dim=1) for f in flat]
        shapes = [(-1,) + (1,) * (w.dim() - 1) for w in weights]
        lo = [r[0].view(shape) for r, shape in zip(ranges, shapes)]
        hi = [r[1].view(shape) for r, shape in zip(ranges, shapes)]
        scale = torch._foreach_sub(hi, lo)
        torch._foreach_clamp_min_(scale, 1e-8)
        torch._foreach_reciprocal_(scale)
        torch._foreach_mul_(scale, 2**bits - 1)
        zero = torch._foreach_mul(scale, lo)
        torch._foreach_round_(zero)
        torch._foreach_add_(zero, half)
        out = torch._foreach_mul([w.detach() for w in weights], scale)
        torch._foreach_sub_(out, zero)
        torch._foreach_round_(out)
        torch._foreach_clamp_min_(out, -half)
        torch._foreach_clamp_max_(out, half - 1)
        torch._foreach_add_(out, zero)
        torch._foreach_div_(out, scale)
    return [_Precomputed.apply(w, [q]) for w, q in zip(weights, out)]


def quantize_weight(weight: Tensor, bits: int, reference: bool = False) -> Tensor:
    flat = weight.detach().flatten(1)
    lo, hi = torch.aminmax(flat, dim=1)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return fake_quantize_ste(weight, lo.view(shape), hi.view(shape), bits, reference)


# ---------------------------------------------------------------- symmetric weights (profile sym-pc)


def symmetric_grid(rows: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """S and Z of the symmetric narrow-range k-bit grid of each row of ``rows`` (reduced over the
    last dimension, kept): S = (2^(k−1) − 1) / max|x|, Z = 0, so the codes run over
    ±(2^(k−1) − 1) and 0 is a code (docs/methods/uniform.md#profiles). The same signed form
    x̂ = (q + Z) / S as the asymmetric grid, so export and integer codes need nothing new."""
    top = rows.abs().amax(dim=-1, keepdim=True)
    scale = (2 ** (bits - 1) - 1) / torch.clamp(top, min=1e-8)
    return scale, torch.zeros_like(scale)


def _symmetric_weight_grid(weight: Tensor) -> Callable[[int], tuple[Tensor, Tensor]]:
    flat = weight.detach().to(compute_dtype(weight.dtype)).flatten(1)
    shape = (-1,) + (1,) * (weight.dim() - 1)

    def grid(bits: int) -> tuple[Tensor, Tensor]:
        scale, zero = symmetric_grid(flat, bits)
        return scale.view(shape), zero.view(shape)

    return grid


def quantize_weight_symmetric(weight: Tensor, bits: int, reference: bool = False) -> Tensor:
    """:func:`quantize_weight` on the symmetric per-output-channel grid (:func:`symmetric_grid`),
    with the same identity STE; ``reference`` takes the straightforward ``x + (q − x).detach()``."""
    scale, zero = _symmetric_weight_grid(weight)(bits)
    if reference or _USE_REFERENCE_STE:
        half = 2 ** (bits - 1)
        q = torch.clamp(torch.round(scale * weight.detach() - zero), -half, half - 1)
        return ste(weight, (q + zero) / scale)
    return FakeQuantSTE.apply(weight, zero, zero, bits, (scale, zero))


def symmetric_weight_grid(weight: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`weight_grid` for the symmetric grid: codes q (int64) and the per-output-channel S and
    Z = 0 (shape (C,)), so that ``(q + Z) / S`` is :func:`quantize_weight_symmetric`'s forward."""
    scale, zero = _symmetric_weight_grid(weight)(bits)
    q = _codes_on_grid(weight.detach().to(scale.dtype), scale, zero, bits)
    return q.to(torch.int64), scale.flatten(), zero.flatten()
