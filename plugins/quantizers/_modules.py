"""The modules of the ``uniform`` quantizer (docs/methods/uniform.md): quantized convolution and linear layers
(per-output-channel weights, quantized once per weight update) and the per-tensor activation
quantizer (tracked, then frozen range). The arithmetic is in :mod:`._fake_quant`, the plugin
(placement, options, integer grids) in :mod:`.uniform`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench_plugins.quantizers import _fake_quant
from zsqbench_plugins.quantizers._fake_quant import (
    fake_quantize_ste,
    frozen_grid,
    quantize_weight,
    quantize_weight_symmetric,
    quantize_weights_together,
)


class _WeightCodesOncePerStep:
    """The fake-quantized weight, computed once per weight update instead of once per use.

    The weight changes only when the optimizer steps (which bumps its version counter), so the
    forwards between two steps — HAST's clean and adversarial student passes, the evaluation
    batches of an epoch — share one quantized tensor and one autograd node. Its backward saves
    no tensors, so a node whose first graph was already backpropagated still passes gradients
    to the weight. The cache is keyed by everything that decides the tensor: the weight's
    version, dtype and device, whether autograd records, and the STE form. After each optimizer
    step the quantizer fills every module's cache at once (:meth:`requantize_together`); a forward
    that finds no matching entry computes its own.
    """

    weight: nn.Parameter
    w_bits: int
    reference_ste: bool = False
    #: symmetric narrow-range weights (profile sym-pc) instead of the asymmetric [min, max] grid
    w_symmetric: bool = False

    def _take_float_state(self, module: nn.Module, bits: int) -> None:
        """``from_float``'s common tail: the FP layer's parameters, then the weight bit-width."""
        self.load_state_dict(module.state_dict())  # type: ignore[attr-defined]
        self.w_bits = bits

    def extra_repr(self) -> str:
        symmetric = ", symmetric" if self.w_symmetric else ""
        return super().extra_repr() + f", w_bits={self.w_bits}{symmetric}"  # type: ignore[misc]

    def _cache_key(self) -> tuple[Any, ...]:
        w = self.weight
        return (w._version, w.dtype, w.device, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                self.reference_ste or _fake_quant._USE_REFERENCE_STE, self.w_bits, self.w_symmetric)

    def _quantize(self, w: Tensor) -> Tensor:
        if self.w_symmetric:
            return quantize_weight_symmetric(w, self.w_bits, self.reference_ste)
        return quantize_weight(w, self.w_bits, self.reference_ste)

    def quantized_weight(self) -> Tensor:
        w = self.weight
        if torch.compiler.is_compiling():  # a compiled step traces the quantization into its graph
            return self._quantize(w)
        key = self._cache_key()
        cached = self.__dict__.get("_wq")
        if cached is not None and cached[0] == key and cached[2] is w:
            return cached[1]
        q = self._quantize(w)
        self.__dict__["_wq"] = (key, q, w)
        return q

    @staticmethod
    def requantize_together(modules: list["_WeightCodesOncePerStep"]) -> None:
        """Quantize the weights of ``modules`` now, all at once (:func:`quantize_weights_together`),
        into the caches their next forward reads; weights it cannot batch (reduced precision, the
        reference STE, symmetric weights) are left to their forward."""
        groups: dict[tuple[Any, ...], list[_WeightCodesOncePerStep]] = {}
        for m in modules:
            w = m.weight
            if (m.reference_ste or m.w_symmetric or _fake_quant._USE_REFERENCE_STE
                    or w.dtype not in (torch.float32, torch.float64)):
                continue
            groups.setdefault((m.w_bits, w.dtype, w.device), []).append(m)
        for (bits, _, _), group in groups.items():
            quantized = quantize_weights_together([m.weight for m in group], bits)
            for m, q in zip(group, quantized):
                m.__dict__["_wq"] = (m._cache_key(), q, m.weight)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the cache behind (a non-leaf tensor cannot be deep-copied)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_wq", None)
        return state


class QuantConv2d(_WeightCodesOncePerStep, nn.Conv2d):
    """Conv2d whose latent FP weight is fake-quantized per output channel (once per weight update)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int) -> "QuantConv2d":
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        new._take_float_state(conv, bits)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_WeightCodesOncePerStep, nn.Linear):
    """Linear layer with per-row (per class) weight fake quantization; bias stays FP."""

    @classmethod
    def from_float(cls, fc: nn.Linear, bits: int) -> "QuantLinear":
        new = cls(fc.in_features, fc.out_features, fc.bias is not None,
                  device=fc.weight.device, dtype=fc.weight.dtype)
        new._take_float_state(fc, bits)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class QuantAct(nn.Module):
    """Per-tensor activation quantizer with a tracked [x_min, x_max] range.

    ``tracking="exact"`` reproduces the reference recurrence, whose bias correction divides
    the stored value again at every step (S1; docs/methods/uniform.md#activation-range-tracking);
    ``"ema"`` is a plain EMA whose first batch initializes the range. The two PTQ estimators
    (docs/methods/uniform.md#range-estimators-for-post-training-quantization) start from the
    stored 0 and only ever widen the range, so a few calibration batches cannot inflate it the
    way ``exact`` does: ``"minmax"`` (ZeroQ) takes the running min/max of the batch extremes,
    ``"sample_mean_max"`` (DSG's "ema") the running min/max of the batch's mean over samples of
    each sample's min/max.
    """

    reference_ste: bool = False
    #: the grid's range always holds 0 (deployable profiles: an integer backend's zero point must be a
    #: code); off by default, where the range is the tracked one as it always was
    include_zero: bool = False

    def __init__(self, bits: int, momentum: float = 0.9, tracking: str = "exact") -> None:
        super().__init__()
        self.a_bits = bits
        self.tracking = tracking
        self.calibrating = True
        self.register_buffer("x_min", torch.zeros(()))
        self.register_buffer("x_max", torch.zeros(()))
        self.register_buffer("beta", torch.tensor(momentum))
        self.register_buffer("beta_t", torch.ones(()))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_range(self, x: Tensor) -> None:
        if self.tracking == "sample_mean_max":
            per_sample = x.detach().flatten(1)
            torch.minimum(self.x_min, per_sample.amin(dim=1).mean(), out=self.x_min)
            torch.maximum(self.x_max, per_sample.amax(dim=1).mean(), out=self.x_max)
            self.updates.add_(1)
            return
        b_min, b_max = torch.aminmax(x.detach())
        beta = self.beta
        if self.tracking == "exact":
            self.beta_t.mul_(beta)
            self.x_min.copy_((beta * self.x_min + (1 - beta) * b_min) / (1 - self.beta_t))
            self.x_max.copy_((beta * self.x_max + (1 - beta) * b_max) / (1 - self.beta_t))
        elif self.tracking == "minmax":
            torch.minimum(self.x_min, b_min, out=self.x_min)
            torch.maximum(self.x_max, b_max, out=self.x_max)
        else:
            # The first batch initializes the range. Chosen with torch.where on the device
            # rather than a Python branch on ``updates.item()``, which would synchronize the
            # host with the GPU at every student forward; the values are the same.
            first = self.updates == 0
            self.x_min.copy_(torch.where(first, b_min, torch.lerp(self.x_min, b_min, 1 - beta)))
            self.x_max.copy_(torch.where(first, b_max, torch.lerp(self.x_max, b_max, 1 - beta)))
        self.updates.add_(1)

    def grid_range(self) -> tuple[Tensor, Tensor]:
        """The [lo, hi] the grid is built on: the tracked range (the buffers themselves), widened to
        hold 0 when ``include_zero``."""
        if not self.include_zero:
            return self.x_min, self.x_max
        return torch.clamp(self.x_min, max=0), torch.clamp(self.x_max, min=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.update_range(x)
            lo, hi = self.grid_range()
            return fake_quantize_ste(x, lo, hi, self.a_bits, self.reference_ste)
        lo, hi = self.grid_range()
        return fake_quantize_ste(x, lo, hi, self.a_bits, self.reference_ste, self._grid(x.dtype))

    def _grid(self, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        """The frozen range's (S, Z), computed once per range instead of at every forward (seven
        small operations per quantizer and forward, which at batch 16 and on a GPU cost launches,
        not arithmetic). Keyed by the range buffers themselves and their versions (a loaded state
        or a moved module recomputes), the compute dtype and the inference mode; a compiled step
        traces the computation instead."""
        if torch.compiler.is_compiling():
            return None
        lo, hi = self.x_min, self.x_max
        key = (lo._version, hi._version, dtype, self.a_bits, torch.is_inference_mode_enabled())
        cached = self.__dict__.get("_frozen_grid")
        if cached is not None and cached[0] == key and cached[1] is lo and cached[2] is hi:
            return cached[3]
        grid = frozen_grid(*self.grid_range(), self.a_bits, dtype)
        self.__dict__["_frozen_grid"] = (key, lo, hi, grid)
        return grid

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the cached grid behind (it is recomputed on first use)."""
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_frozen_grid", None)
        return state

    def extra_repr(self) -> str:
        zero = ", include_zero" if self.include_zero else ""
        return f"a_bits={self.a_bits}, tracking={self.tracking}{zero}"


class QuantizedActivation(nn.Module):
    """An FP activation followed by its quantizer; replaces the activation under the same name."""

    def __init__(self, act: nn.Module, quant: QuantAct) -> None:
        super().__init__()
        self.act = act
        self.quant = quant

    def forward(self, x: Tensor) -> Tensor:
        return self.quant(self.act(x))
