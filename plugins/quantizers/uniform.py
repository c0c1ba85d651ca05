"""Asymmetric uniform fake quantization, as shared by GDFQ, AdaDFQ, HAST and AKT (METHODS §1).

Weights: per output channel (conv) / per row (FC), range = current min/max, every forward.
Activations: per tensor, one quantizer after every ReLU, range tracked during calibration and
frozen afterwards. Identity straight-through estimator, no clipping mask. Module names of the
FP network are kept, so feature taps address teacher and student with the same path.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api import (
    IntegerActivation,
    IntegerGrid,
    IntegerLayer,
    IntegerWeight,
    PluginOptions,
    QuantizedWeight,
    WeightCodeQuantizer,
    hookimpl,
)
from zsqbench.errors import UserError
from zsqbench_plugins.quantizers import _fake_quant
from zsqbench_plugins.quantizers._fake_quant import (  # noqa: F401  (the quantizer's arithmetic, re-exported)
    FakeQuantSTE,
    _codes_into,
    _fake_quantize_into,
    fake_quantize,
    fake_quantize_ste,
    grid_of,
    quantize_weight,
    reference_ste,
    ste,
    weight_grid,
)
from zsqbench_plugins.quantizers.cards import UNIFORM_CARD


class _WeightCodesOncePerStep:
    """The fake-quantized weight, computed once per weight update instead of once per use.

    The weight changes only when the optimizer steps (which bumps its version counter), so the
    forwards between two steps — HAST's clean and adversarial student passes, the evaluation
    batches of an epoch — share one quantized tensor and one autograd node. Its backward saves
    no tensors, so a node whose first graph was already backpropagated still passes gradients
    to the weight. The cache is keyed by everything that decides the tensor: the weight's
    version, dtype and device, whether autograd records, and the STE form.
    """

    weight: nn.Parameter
    w_bits: int
    reference_ste: bool

    def quantized_weight(self) -> Tensor:
        w = self.weight
        if torch.compiler.is_compiling():  # a compiled step traces the quantization into its graph
            return quantize_weight(w, self.w_bits, self.reference_ste)
        key = (w._version, w.dtype, w.device, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
               self.reference_ste or _fake_quant._USE_REFERENCE_STE, self.w_bits)
        cached = self.__dict__.get("_wq")
        if cached is not None and cached[0] == key and cached[2] is w:
            return cached[1]
        q = quantize_weight(w, self.w_bits, self.reference_ste)
        self.__dict__["_wq"] = (key, q, w)
        return q

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the cache behind (a non-leaf tensor cannot be deep-copied)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_wq", None)
        return state


class QuantConv2d(_WeightCodesOncePerStep, nn.Conv2d):
    """Conv2d whose latent FP weight is fake-quantized per output channel (once per weight update)."""

    w_bits: int
    reference_ste: bool = False

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
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}"


class QuantLinear(_WeightCodesOncePerStep, nn.Linear):
    """Linear layer with per-row (per class) weight fake quantization; bias stays FP."""

    w_bits: int
    reference_ste: bool = False

    @classmethod
    def from_float(cls, fc: nn.Linear, bits: int) -> "QuantLinear":
        new = cls(fc.in_features, fc.out_features, fc.bias is not None,
                  device=fc.weight.device, dtype=fc.weight.dtype)
        new.load_state_dict(fc.state_dict())
        new.w_bits = bits
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}"


class QuantAct(nn.Module):
    """Per-tensor activation quantizer with a tracked [x_min, x_max] range.

    ``tracking="exact"`` reproduces the reference recurrence, whose bias correction divides
    the stored value again at every step (METHODS §1.3, S1); ``"ema"`` is a plain EMA whose
    first batch initializes the range. The two PTQ estimators of METHODS-ZEROQ-DSG-INTRAQ §1.5
    start from the stored 0 and only ever widen the range, so a few calibration batches cannot
    inflate it the way ``exact`` does: ``"minmax"`` (ZeroQ) takes the running min/max of the
    batch extremes, ``"sample_mean_max"`` (DSG's "ema") the running min/max of the batch's mean
    over samples of each sample's min/max.
    """

    reference_ste: bool = False

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

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.update_range(x)
        return fake_quantize_ste(x, self.x_min, self.x_max, self.a_bits, self.reference_ste)

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


def _quantize_output(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook of ``quantize_outputs``: the module's output through its own quantizer."""
    return module.output_quant(output)


class UniformOptions(PluginOptions):
    range_tracking: Literal["exact", "ema", "minmax", "sample_mean_max"] = Field(
        "exact", description="'exact' reference recurrence (default; GDFQ family), a plain 'ema', or the PTQ "
        "estimators 'minmax' (running min/max from 0: ZeroQ) and 'sample_mean_max' (running min/max of the "
        "mean per-sample extremes: DSG)"
    )
    momentum: float = Field(0.9, gt=0, lt=1)
    ste: Literal["fused", "reference"] = Field(
        "fused", description="'fused' one-node fake quantization (default) or the straightforward "
        "x + (q - x).detach(), for comparisons (forward bit-identical, tests/test_speed_equivalence.py)",
    )

    quantize_outputs: tuple[str, ...] = Field(
        (), description="a labelled non-default placement: module paths (fnmatch patterns) whose outputs also get "
        "a per-tensor activation quantizer, e.g. 'features.stage*.unit*.conv3' for MobileNetV2's linear-bottleneck "
        "outputs, which the papers leave in FP (IMAGENET.md §2)",
    )

    @model_serializer(mode="wrap")
    def _omit_defaults_added_later(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``ste`` changes speed, not numbers, and ``quantize_outputs`` came after the first trials:
        at their defaults they stay out of the dumped options, so specs and trial ids are the same
        as before they existed."""
        data = handler(self)
        if data.get("ste") == "fused":
            del data["ste"]
        if not data.get("quantize_outputs"):
            data.pop("quantize_outputs", None)
        return data


class UniformQuantizer(WeightCodeQuantizer):
    name = "uniform"
    description = "asymmetric uniform fake quantization: per-channel weights, per-tensor activations after ReLU, STE"
    card = UNIFORM_CARD
    Options = UniformOptions

    def quantize(self, model: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
        opts: UniformOptions = self.options  # type: ignore[assignment]
        reference = opts.ste == "reference"
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, (QuantConv2d, QuantLinear, QuantizedActivation)):
                    continue
                if isinstance(child, nn.Conv2d):
                    new: nn.Module = QuantConv2d.from_float(child, w_bits)
                elif isinstance(child, nn.Linear):
                    new = QuantLinear.from_float(child, w_bits)
                elif isinstance(child, (nn.ReLU, nn.ReLU6)):
                    quant = QuantAct(a_bits, opts.momentum, opts.range_tracking)
                    quant.reference_ste = reference
                    setattr(parent, child_name, QuantizedActivation(child, quant))
                    continue
                else:
                    continue
                new.reference_ste = reference
                setattr(parent, child_name, new)
        if opts.quantize_outputs:
            self._quantize_outputs(model, a_bits, reference)
        return model

    def _quantize_outputs(self, model: nn.Module, a_bits: int, reference: bool) -> None:
        """A QuantAct on the output of every module matching ``quantize_outputs``, registered as the
        module's child ``output_quant`` and applied by a forward hook, so the FP module names (and
        state_dict keys) stay as they are."""
        opts: UniformOptions = self.options  # type: ignore[assignment]
        matched: set[str] = set()
        for path, module in list(model.named_modules()):
            hits = [p for p in opts.quantize_outputs if path and fnmatch.fnmatchcase(path, p)]
            if not hits or isinstance(module, QuantAct) or hasattr(module, "output_quant"):
                continue
            matched.update(hits)
            quant = QuantAct(a_bits, opts.momentum, opts.range_tracking)
            quant.reference_ste = reference
            module.add_module("output_quant", quant)
            module.register_forward_hook(_quantize_output)
        unmatched = [p for p in opts.quantize_outputs if p not in matched]
        if unmatched:
            raise UserError(f"uniform.quantize_outputs: {unmatched} match no module of this model; give module paths "
                            "as `zsqbench plugins MODEL` lists its taps, e.g. 'features.stage*.unit*.conv3'")

    def set_calibrating(self, student: nn.Module, enabled: bool) -> None:
        for module in student.modules():
            if isinstance(module, QuantAct):
                module.calibrating = enabled

    def weights_updated(self, student: nn.Module) -> None:
        """The once-per-update quantized weights are recomputed at the next forward."""
        for module in student.modules():
            if isinstance(module, _WeightCodesOncePerStep):
                module.__dict__.pop("_wq", None)

    def is_calibrating(self, student: nn.Module) -> bool:
        """True when the activation quantizers track their ranges (they are switched together;
        a student whose quantizers disagree was changed behind the quantizer's back)."""
        flags = {m.calibrating for m in student.modules() if isinstance(m, QuantAct)}
        if len(flags) > 1:
            raise RuntimeError("the student's activation quantizers disagree on calibration; "
                               "switch them through the quantizer (set_calibrating)")
        return flags == {True}

    def integer_layers(self, student: nn.Module) -> list[IntegerLayer]:
        """Every quantized weight (per output channel) and activation quantizer (per tensor, frozen
        range) as an integer grid; the grids are computed by the forward pass's own ops."""
        if self.is_calibrating(student):
            raise RuntimeError("activation ranges are still being calibrated; freeze them (set_calibrating) first")
        layers: list[IntegerLayer] = []
        for path, module in student.named_modules():
            if isinstance(module, (QuantConv2d, QuantLinear)):
                codes, scale, zero = weight_grid(module.weight, module.w_bits)
                plain = _plain_copy(module)
                layers.append(IntegerWeight(path, plain, IntegerGrid(module.w_bits, scale, zero), codes))
            elif isinstance(module, QuantAct):
                scale, zero = grid_of(module.x_min.detach(), module.x_max.detach(), module.a_bits)
                layers.append(IntegerActivation(path, IntegerGrid(module.a_bits, scale, zero)))
        return layers


    def quantized_weights(self, student: nn.Module) -> list[QuantizedWeight]:
        """The weights of every QuantConv2d and QuantLinear (21 + 1 in ResNet-20), in module order."""
        return [QuantizedWeight(f"{name}.weight", module.weight, module.w_bits)
                for name, module in student.named_modules() if isinstance(module, (QuantConv2d, QuantLinear))]

    def weight_codes(self, weight: Tensor, bits: int, *, stacked: bool = False) -> Tensor:
        """The forward's integer codes (METHODS §1.2): per output channel (row), the range is the
        row's own min/max, then ``clamp(round(x·S − Z), −2^(k−1), 2^(k−1) − 1)`` by the same
        function and in the same dtype as :class:`FakeQuantSTE`, hence bit-identical to it."""
        x = weight.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        rows = x.flatten(2 if stacked else 1)
        lo, hi = torch.aminmax(rows, dim=-1, keepdim=True)
        codes, _, _ = _codes_into(rows, lo, hi, bits)
        return codes.view(x.shape)




def _plain_copy(module: nn.Module) -> nn.Module:
    """The FP layer a quantized one was made from (same settings and parameters, no quantizer)."""
    if isinstance(module, QuantConv2d):
        plain: nn.Module = nn.Conv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, module.bias is not None, module.padding_mode,
            device=module.weight.device, dtype=module.weight.dtype,
        )
    else:
        plain = nn.Linear(module.in_features, module.out_features, module.bias is not None,
                          device=module.weight.device, dtype=module.weight.dtype)
    plain.load_state_dict(module.state_dict())
    return plain.eval()


@hookimpl
def register_quantizers(register) -> None:
    register(UniformQuantizer)
