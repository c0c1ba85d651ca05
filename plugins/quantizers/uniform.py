"""Asymmetric uniform fake quantization, as shared by GDFQ, AdaDFQ, HAST and AKT (METHODS §1).

Weights: per output channel (conv) / per row (FC), range = current min/max, every forward.
Activations: per tensor, one quantizer after every ReLU, range tracked during calibration and
frozen afterwards. Identity straight-through estimator, no clipping mask. Module names of the
FP network are kept, so feature taps address teacher and student with the same path.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.hookspecs import hookimpl
from zsqbench.interfaces import PluginOptions, Quantizer


def fake_quantize(x: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize ``x`` onto the k-bit grid of [lo, hi] (signed order of METHODS §1.2).

    ``lo``/``hi`` broadcast against ``x``. No gradient: callers wrap it in the STE.
    """
    n = 2**bits - 1
    half = 2 ** (bits - 1)
    scale = n / torch.clamp(hi - lo, min=1e-8)
    zero = torch.round(scale * lo) + half
    q = torch.clamp(torch.round(scale * x - zero), -half, half - 1)
    return (q + zero) / scale


def ste(x: Tensor, quantized: Tensor) -> Tensor:
    """Forward: the quantized value; backward: the incoming gradient, unchanged."""
    return x + (quantized - x).detach()


def quantize_weight(weight: Tensor, bits: int) -> Tensor:
    flat = weight.detach().flatten(1)
    lo, hi = torch.aminmax(flat, dim=1)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return ste(weight, fake_quantize(weight.detach(), lo.view(shape), hi.view(shape), bits))


class QuantConv2d(nn.Conv2d):
    """Conv2d whose latent FP weight is fake-quantized per output channel on every forward."""

    w_bits: int

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int) -> "QuantConv2d":
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        new.load_state_dict(conv.state_dict())
        new.w_bits = bits
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, quantize_weight(self.weight, self.w_bits), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}"


class QuantLinear(nn.Linear):
    """Linear layer with per-row (per class) weight fake quantization; bias stays FP."""

    w_bits: int

    @classmethod
    def from_float(cls, fc: nn.Linear, bits: int) -> "QuantLinear":
        new = cls(fc.in_features, fc.out_features, fc.bias is not None,
                  device=fc.weight.device, dtype=fc.weight.dtype)
        new.load_state_dict(fc.state_dict())
        new.w_bits = bits
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, quantize_weight(self.weight, self.w_bits), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}"


class QuantAct(nn.Module):
    """Per-tensor activation quantizer with a tracked [x_min, x_max] range.

    ``tracking="exact"`` reproduces the reference recurrence, whose bias correction divides
    the stored value again at every step (METHODS §1.3, S1); ``"ema"`` is a plain EMA whose
    first batch initializes the range.
    """

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
        b_min, b_max = torch.aminmax(x.detach())
        beta = self.beta
        if self.tracking == "exact":
            self.beta_t.mul_(beta)
            self.x_min.copy_((beta * self.x_min + (1 - beta) * b_min) / (1 - self.beta_t))
            self.x_max.copy_((beta * self.x_max + (1 - beta) * b_max) / (1 - self.beta_t))
        elif self.updates.item() == 0:
            self.x_min.copy_(b_min)
            self.x_max.copy_(b_max)
        else:
            self.x_min.lerp_(b_min, 1 - beta)
            self.x_max.lerp_(b_max, 1 - beta)
        self.updates.add_(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.update_range(x)
        return ste(x, fake_quantize(x.detach(), self.x_min, self.x_max, self.a_bits))

    def extra_repr(self) -> str:
        return f"a_bits={self.a_bits}, tracking={self.tracking}"


class QuantizedActivation(nn.Module):
    """An FP activation followed by its quantizer; replaces the activation under the same name."""

    def __init__(self, act: nn.Module, quant: QuantAct) -> None:
        super().__init__()
        self.act = act
        self.quant = quant

    def forward(self, x: Tensor) -> Tensor:
        return self.quant(self.act(x))


class UniformOptions(PluginOptions):
    range_tracking: Literal["exact", "ema"] = Field(
        "exact", description="'exact' reference recurrence (default) or a plain EMA"
    )
    momentum: float = Field(0.9, gt=0, lt=1)


class UniformQuantizer(Quantizer):
    name = "uniform"
    description = "asymmetric uniform fake quantization: per-channel weights, per-tensor activations after ReLU, STE"
    Options = UniformOptions

    def quantize(self, model: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
        opts: UniformOptions = self.options  # type: ignore[assignment]
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, (QuantConv2d, QuantLinear, QuantizedActivation)):
                    continue
                if isinstance(child, nn.Conv2d):
                    setattr(parent, child_name, QuantConv2d.from_float(child, w_bits))
                elif isinstance(child, nn.Linear):
                    setattr(parent, child_name, QuantLinear.from_float(child, w_bits))
                elif isinstance(child, (nn.ReLU, nn.ReLU6)):
                    quant = QuantAct(a_bits, opts.momentum, opts.range_tracking)
                    setattr(parent, child_name, QuantizedActivation(child, quant))
        return model

    def set_calibrating(self, student: nn.Module, enabled: bool) -> None:
        for module in student.modules():
            if isinstance(module, QuantAct):
                module.calibrating = enabled


@hookimpl
def register_quantizers(register) -> None:
    register(UniformQuantizer)
