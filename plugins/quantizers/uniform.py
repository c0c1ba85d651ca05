"""Asymmetric uniform fake quantization, as shared by GDFQ, AdaDFQ, HAST and AKT (docs/methods/uniform.md).

Weights: per output channel (conv) / per row (FC), range = current min/max, every forward.
Activations: per tensor, one quantizer after every ReLU, range tracked during calibration and
frozen afterwards. Identity straight-through estimator, no clipping mask. Module names of the
FP network are kept, so feature taps address teacher and student with the same path.

That is the profile ``zsq-asym-pc``; ``profile`` picks another convention of the literature
(first and last layer at 8 bits, symmetric weights: :mod:`.profiles`).
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from zsqbench.api import (
    IntegerActivation,
    IntegerGrid,
    IntegerLayer,
    IntegerWeight,
    OmitAtDefault,
    PluginOptions,
    QuantizedWeight,
    SpeedOnly,
    WeightCodeQuantizer,
    hookimpl,
)
from zsqbench.errors import UserError
from zsqbench_plugins.quantizers._activation_sites import check_activation_sites
from zsqbench_plugins.quantizers._deploy import CONTAINER_BITS, DeployConv2d, DeployLinear, deploy_student
from zsqbench_plugins.quantizers._fake_quant import (
    _codes_into,
    _codes_on_grid,
    grid_of,
    symmetric_grid,
    symmetric_weight_grid,
    weight_grid,
)
from zsqbench_plugins.quantizers._modules import (
    QuantAct,
    QuantConv2d,
    QuantizedActivation,
    QuantLinear,
    _WeightCodesOncePerStep,
)
from zsqbench_plugins.quantizers.cards import UNIFORM_CARD
from zsqbench_plugins.quantizers.profiles import DEFAULT_PROFILE, PROFILES, Profile


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
    ste: Annotated[Literal["fused", "reference"], SpeedOnly()] = Field(
        "fused", description="'fused' one-node fake quantization (default) or the straightforward "
        "x + (q - x).detach(), for comparisons (forward bit-identical, tests/trial/test_speed_equivalence.py); "
        "speed only, not part of the trial id",
    )
    # came after the first trials: at its default it stays out of the id, which stays as it was
    quantize_outputs: Annotated[tuple[str, ...], OmitAtDefault()] = Field(
        (), description="a labelled non-default placement: module paths (fnmatch patterns) whose outputs also get "
        "a per-tensor activation quantizer, e.g. 'features.stage*.unit*.conv3' for MobileNetV2's linear-bottleneck "
        "outputs, which the papers leave in FP (IMAGENET.md §2)",
    )
    # came after the first trials too: the default is the quantizer as it always was, so its ids stay
    profile: Annotated[Literal[tuple(PROFILES)], OmitAtDefault()] = Field(  # type: ignore[valid-type]
        DEFAULT_PROFILE, description="the quantization convention (docs/methods/uniform.md#profiles): "
        "'zsq-asym-pc' (default: asymmetric per-channel weights, every layer at the trial's bits, as GDFQ -> AKT), "
        "'first-last-8bit' (the first and the last layer at 8 bits), 'sym-pc' (symmetric per-channel weights), 'ort-int8' and 'ort-int4w' (deployable: ONNX Runtime's integer "
        "rules, BN folded; docs/deployment.md#deployable-profiles)",
    )


class UniformQuantizer(WeightCodeQuantizer):
    name = "uniform"
    description = "asymmetric uniform fake quantization: per-channel weights, per-tensor activations after ReLU, STE"
    card = UNIFORM_CARD
    Options = UniformOptions

    @property
    def profile(self) -> Profile:
        return PROFILES[self.options.profile]  # type: ignore[attr-defined]

    @classmethod
    def describe_protocol(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The profile of a trial's options (as its spec holds them) as its result records it
        (``certification.quantizer``: which layers are quantized, how, static ranges)."""
        return PROFILES[options.get("profile", DEFAULT_PROFILE)].describe(options)

    def quantize(self, model: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
        opts: UniformOptions = self.options  # type: ignore[assignment]
        reference = opts.ste == "reference"
        check_activation_sites(model)
        if self.profile.deployable:
            return self._quantize_deployable(model, w_bits, a_bits)
        symmetric = self.profile.weight_symmetric
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
                new.w_symmetric = symmetric
                setattr(parent, child_name, new)
        if self.profile.first_last_bits is not None:
            self._first_and_last(model, self.profile.first_last_bits)
        if opts.quantize_outputs:
            self._quantize_outputs(model, a_bits, reference)
        return model

    def _quantize_deployable(self, model: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
        """The student of a deployable profile (_deploy.py); what it cannot execute exactly is refused
        here, which planning runs on the meta device (grid/request.py check_quantizer_fits)."""
        opts: UniformOptions = self.options  # type: ignore[assignment]
        profile = self.profile
        if w_bits > profile.max_w_bits or a_bits > CONTAINER_BITS:
            raise UserError(f"uniform.profile={profile.name} executes at most {profile.max_w_bits}-bit weights and "
                            f"{CONTAINER_BITS}-bit activations exactly; W{w_bits}A{a_bits} is not deployable there"
                            + (" (use ort-int8)" if w_bits <= CONTAINER_BITS else ""))
        if opts.quantize_outputs:
            raise UserError(f"uniform.profile={profile.name} places its own output quantizers (every integer "
                            "operator's output); uniform.quantize_outputs is for the academic profiles")

        def new_quant(bits: int) -> QuantAct:
            quant = QuantAct(bits, opts.momentum, opts.range_tracking)
            quant.reference_ste = opts.ste == "reference"
            return quant

        student = deploy_student(model, w_bits, a_bits, profile.name, profile.weight_storage_bits, new_quant)
        for module in student.modules():
            if isinstance(module, (DeployConv2d, DeployLinear)):
                module.reference_ste = opts.ste == "reference"
        return student

    @staticmethod
    def _first_and_last(model: nn.Module, bits: int) -> None:
        """The first and the last weight layer, and the activation quantizer feeding the last one
        (the last after a ReLU), at ``bits``. First and last in module registration order, which is
        the forward order of every bundled teacher (tests/plugins/test_quantizer_profiles.py)."""
        weights = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
        acts = [m.quant for m in model.modules() if isinstance(m, QuantizedActivation)]
        if not weights:
            raise UserError("uniform.profile=first-last-8bit: the model has no Conv2d or Linear layer to keep at "
                            f"{bits} bits")
        weights[0].w_bits = weights[-1].w_bits = bits
        if acts:
            acts[-1].a_bits = bits

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
        """The once-per-update quantized weights are recomputed now, all together (a few
        multi-tensor operations instead of about thirteen operations per weight: at batch 16 and on a
        GPU those cost dispatches and launches, not arithmetic). Computed in the caller's autograd
        mode; a forward in another mode (evaluation) recomputes its own. A compiled step traces
        the quantization at each forward instead."""
        modules = [m for m in student.modules() if isinstance(m, _WeightCodesOncePerStep)]
        for module in modules:
            module.__dict__.pop("_wq", None)
        if not torch.compiler.is_compiling():
            _WeightCodesOncePerStep.requantize_together(modules)

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
            if isinstance(module, (DeployConv2d, DeployLinear)):
                layers.append(_integer_op(path, module))
            elif isinstance(module, (QuantConv2d, QuantLinear)):
                grid = symmetric_weight_grid if module.w_symmetric else weight_grid
                codes, scale, zero = grid(module.weight, module.w_bits)
                plain = _plain_copy(module)
                layers.append(IntegerWeight(path, plain, IntegerGrid(module.w_bits, scale, zero), codes))
            elif isinstance(module, QuantAct):
                lo, hi = module.grid_range()
                scale, zero = grid_of(lo.detach(), hi.detach(), module.a_bits)
                layers.append(IntegerActivation(path, IntegerGrid(module.a_bits, scale, zero)))
        return layers


    def quantized_weights(self, student: nn.Module) -> list[QuantizedWeight]:
        """The weights of every QuantConv2d and QuantLinear (21 + 1 in ResNet-20), in module order."""
        return [QuantizedWeight(f"{name}.weight", module.weight, module.w_bits)
                for name, module in student.named_modules() if isinstance(module, (QuantConv2d, QuantLinear))]

    def weight_codes(self, weight: Tensor, bits: int, *, stacked: bool = False) -> Tensor:
        """The forward's integer codes (docs/methods/uniform.md#the-quantization-function): per
        output channel (row), the range is the row's own min/max, then
        ``clamp(round(x·S − Z), −2^(k−1), 2^(k−1) − 1)`` by the same function and in the same dtype
        as :class:`FakeQuantSTE`, hence bit-identical to it. Under the profile ``sym-pc``, on the
        row's symmetric grid (:func:`symmetric_grid`), as its forward."""
        x = weight.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        rows = x.flatten(2 if stacked else 1)
        if self.profile.weight_symmetric:
            scale, zero = symmetric_grid(rows, bits)
            return _codes_on_grid(rows, scale, zero, bits).view(x.shape)
        lo, hi = torch.aminmax(rows, dim=-1, keepdim=True)
        codes, _, _ = _codes_into(rows, lo, hi, bits)
        return codes.view(x.shape)




@torch.no_grad()
def _integer_op(path: str, module: DeployConv2d | DeployLinear) -> IntegerWeight:
    """A layer of a deployable profile as one integer operator: the folded weight's codes, the int32 bias
    codes, and which quantizers it reads and writes (what ``zsqbench export`` turns into QLinearConv or
    MatMulInteger)."""
    weight, bias = module.folded()
    codes, scale, zero = symmetric_weight_grid(weight, module.w_bits)
    plain = _plain_copy(module)
    plain.weight.copy_(weight)
    bias_codes = None
    if bias is not None:
        bias_codes, _ = module.bias_codes(bias, scale)
        bias_codes = bias_codes.to(torch.int64)
        if plain.bias is None:
            plain.bias = nn.Parameter(bias.detach().clone())
        else:
            plain.bias.copy_(bias)
    return IntegerWeight(path, plain, IntegerGrid(module.w_bits, scale, zero), codes, bias_codes=bias_codes,
                         input=module.source_path, output=module.output_path, absorbed=module.absorbed,
                         storage_bits=module.storage_bits)


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
    plain.load_state_dict({k: v for k, v in module.state_dict().items() if k in ("weight", "bias")})
    return plain.eval()


@hookimpl
def register_quantizers(register) -> None:
    register(UniformQuantizer)
