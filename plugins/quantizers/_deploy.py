"""The student under a deployable profile (``ort-int8``, ``ort-int4w``; docs/deployment.md#deployable-profiles):
the arithmetic ONNX Runtime's integer kernels (QLinearConv, MatMulInteger) execute, simulated in float.

What an integer convolution needs, the student computes, so that the exported integer model reproduces it
to rounding:

* BatchNorm is folded into the convolution before its weight is quantized. The student's BN runs in eval
  mode on the teacher's frozen statistics, so the fold is w·γ/σ and β − μ·γ/σ (σ = √(var + ε)), recomputed
  at every forward from the trainable γ and β (gradients reach them and w through the straight-through
  estimator). The BN module stays where it was, with its parameters and buffers under the same names
  (checkpoints, the optimizer's parameter list), and passes its input on (:class:`FoldedBatchNorm`).
* Weights: symmetric narrow-range per output channel (zero point 0, codes ±(2^(k−1) − 1)) of the folded
  weight, in an int8 container.
* The bias: int32 codes at scale s_x·s_w (the input's scale times each channel's weight scale), so that
  the integer accumulator Σ(c_x − z_x)·q_w + q_b is the layer's output over s_x·s_w exactly.
* The layer's output codes: a convolution whose output goes (through its folded BN) to nothing but a
  ReLU/ReLU6 is requantized by that activation's quantizer (QLinearConv with the ReLU fused: its zero
  point 0 clips negatives); any other convolution output (in a ResNet, the two that feed a residual sum)
  gets an 8-bit quantizer of its own (``output_quant``). The classifier's output stays float
  (MatMulInteger's int32 accumulator times s_x·s_w: the logits).
* The layer's input codes: a layer reading an activation quantizer's output reads those codes; any other
  input (the network's input, a pooled feature, a residual sum without ReLU) gets an 8-bit quantizer of its
  own (``input_quant``).
* Every activation grid holds 0 (``QuantAct.include_zero``): the zero point must be a code.

Requantization rounding: ONNX Runtime computes round_half_even(acc · fl(s_x·s_w/s_y)) + z_y, saturated to
the container and clipped to the k-bit range; the student computes round_half_even(S_y·ŷ − Z_y) with
ŷ = conv(x̂, ŵ) + b̂ = s_x·s_w·acc in real arithmetic. The two differ only in float rounding, so a code can
differ only where the exact value is within a few ulps of a rounding tie.

Where these rules go is read from the model's torch.fx graph (:func:`place`); what the integer path cannot
execute exactly is refused there, in one line, while the grid is planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.errors import UserError
from zsqbench_plugins.quantizers._fake_quant import _Precomputed, frozen_grid, quantize_weight_symmetric, symmetric_grid
from zsqbench_plugins.quantizers._modules import QuantAct, QuantConv2d, QuantizedActivation, QuantLinear

#: the bit-width of the quantizers the integer path adds (the network input, conv outputs feeding a sum,
#: layer inputs that are not an activation quantizer's output): the containers' own
CONTAINER_BITS = 8
INT32_MAX = 2**31 - 1
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
_SUPPORTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


class FoldedBatchNorm(nn.BatchNorm2d):
    """A BN folded into the convolution before it (which reads its γ, β and frozen statistics): the same
    parameters and buffers under the same names, and a forward that passes its input on."""

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> "FoldedBatchNorm":
        ref = bn.running_mean if bn.running_mean is not None else bn.weight
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  device=ref.device if ref is not None else None, dtype=ref.dtype if ref is not None else None)
        new.load_state_dict(bn.state_dict())
        for name, p in new.named_parameters():
            p.requires_grad_(getattr(bn, name).requires_grad)  # trainable as they were
        return new.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        return x


def fold_factor(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(a, c) of the frozen BN y = a·x + c: a = γ/σ, c = β − μ·a."""
    if bn.running_var is None or bn.running_mean is None:
        raise UserError("a BatchNorm without running statistics cannot be folded")
    inv = torch.rsqrt(bn.running_var + bn.eps)
    a = bn.weight * inv if bn.weight is not None else inv
    c = -bn.running_mean * a
    return a, (c + bn.bias if bn.bias is not None else c)


class _DeployLayer:
    """What a convolution and the classifier share under a deployable profile (module docstring)."""

    weight: nn.Parameter
    bias: Tensor | None
    w_bits: int
    reference_ste: bool
    w_symmetric = True
    #: module paths, for the exporter: the quantizer whose codes the layer reads, the one requantizing its
    #: output (None: float output), and the modules the integer operator computes itself
    source_path: str = ""
    output_path: str | None = None
    absorbed: tuple[str, ...] = ()
    storage_bits: int | None = None

    def _deploy_init(self) -> None:
        self.input_quant: QuantAct | None = None
        self.output_quant: QuantAct | None = None

    @property
    def source(self) -> QuantAct:
        return self.__dict__["_source"]

    def link(self, source: QuantAct, bn: nn.BatchNorm2d | None) -> None:
        """The quantizer whose codes this layer reads and the BN folded into it (plain references, so
        neither is registered twice: state_dict keys stay the teacher's)."""
        self.__dict__["_source"] = source
        self.__dict__["_bn"] = bn

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias with the BN folded in (the weight's own, without one)."""
        bn = self.__dict__.get("_bn")
        if bn is None:
            return self.weight, self.bias
        a, c = fold_factor(bn)
        weight = self.weight * a.view((-1,) + (1,) * (self.weight.dim() - 1))
        return weight, (c if self.bias is None else self.bias * a + c)

    def weight_scale(self, weight: Tensor) -> Tensor:
        """S of each output channel's symmetric grid (what :func:`quantize_weight_symmetric` uses)."""
        flat = weight.detach().to(torch.float32 if weight.dtype not in (torch.float32, torch.float64)
                                  else weight.dtype).flatten(1)
        return symmetric_grid(flat, self.w_bits)[0].flatten()

    def bias_codes(self, bias: Tensor, weight_scale: Tensor) -> tuple[Tensor, Tensor]:
        """The int32 codes of ``bias`` at scale s_x·s_w and their multiplier S_x·S_w (per channel)."""
        lo, hi = self.source.grid_range()
        s_x, _ = frozen_grid(lo, hi, self.source.a_bits, torch.float32)
        multiplier = (s_x * weight_scale.to(torch.float32)).detach()
        with torch.no_grad():
            q = torch.clamp(torch.round(bias.detach().to(torch.float32) * multiplier), -INT32_MAX, INT32_MAX)
        return q, multiplier

    def deploy_parameters(self) -> tuple[Tensor, Tensor | None]:
        """The fake-quantized folded weight and bias the forward uses (identity STE for both)."""
        weight, bias = self.folded()
        wq = quantize_weight_symmetric(weight, self.w_bits, self.reference_ste)
        if bias is None:
            return wq, None
        q, multiplier = self.bias_codes(bias, self.weight_scale(weight))
        return wq, _Precomputed.apply(bias, [(q / multiplier).to(bias.dtype)])

    @classmethod
    def from_float(cls, layer: nn.Module, bits: int):  # noqa: ANN206 (the subclass)
        """The quantized layer of the next base class, then the deployable profile's own parts."""
        new = super().from_float(layer, bits)  # type: ignore[misc]
        new._deploy_init()
        return new

    def _deploy_forward(self, x: Tensor, op) -> Tensor:  # noqa: ANN001 (the layer's own F.conv2d/F.linear)
        if self.input_quant is not None:
            x = self.input_quant(x)
        weight, bias = self.deploy_parameters()
        y = op(x, weight, bias)
        return self.output_quant(y) if self.output_quant is not None else y


class DeployConv2d(_DeployLayer, QuantConv2d):
    """A convolution with its BN folded in, integer bias, and the quantizers an integer conv needs."""

    def forward(self, x: Tensor) -> Tensor:
        return self._deploy_forward(x, lambda x, w, b: self._conv_forward(x, w, b))


class DeployLinear(_DeployLayer, QuantLinear):
    """The classifier under a deployable profile: integer weights and bias, an 8-bit input, float logits."""

    def forward(self, x: Tensor) -> Tensor:
        return self._deploy_forward(x, F.linear)


@dataclass
class Placement:
    """Where the integer path's rules go, by module path (the FP network's paths, which the student keeps)."""

    layers: list[str] = field(default_factory=list)  # every Conv2d and Linear, in forward order
    folds: dict[str, str] = field(default_factory=dict)  # conv -> the BN folded into it
    fused: dict[str, str] = field(default_factory=dict)  # conv -> the ReLU whose quantizer requantizes it
    own_output: set[str] = field(default_factory=set)  # convs that get an 8-bit output quantizer
    #: layer -> ("act", ReLU path) or ("out", conv path): whose codes it reads; absent: its own input quantizer
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def place(model: nn.Module, profile: str) -> Placement:
    """Read the model's dataflow from its torch.fx graph and decide the placement, refusing in one line
    whatever the integer path cannot execute exactly (module docstring)."""
    what = f"uniform.profile={profile}"
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 (any tracing failure means the same to the user)
        raise UserError(f"{what} needs a model torch.fx can trace, to place its integer operators "
                        f"({_first_line(exc)})") from None
    modules = dict(model.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module"]
    sites: dict[str, int] = {}
    for n in calls:
        sites[n.target] = sites.get(n.target, 0) + 1
        m = modules[n.target]
        if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, _SUPPORTED):
            raise UserError(f"{what}: module {n.target} ({type(m).__name__}) is not an operator the integer path "
                            "executes exactly (Conv2d, Linear, a BatchNorm2d folded into its Conv2d, ReLU/ReLU6, "
                            "and parameter-free float ops between quantizers)")
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise UserError(f"{what}: convolution {n.target} pads with '{m.padding_mode}'; QLinearConv pads with zeros")
    shared = sorted(t for t, k in sites.items() if k > 1 and isinstance(modules[t], (*_SUPPORTED, *_ACTIVATIONS)))
    if shared:
        raise UserError(f"{what}: module {shared[0]} is called at {sites[shared[0]]} places in the forward; each "
                        "integer operator needs a module of its own")
    plan = Placement()
    out_node: dict[str, torch.fx.Node] = {}
    is_mod = lambda n, kinds: n.op == "call_module" and isinstance(modules[n.target], kinds)  # noqa: E731
    for n in calls:
        m = modules[n.target]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            plan.layers.append(n.target)
            out_node[n.target] = n
        elif isinstance(m, nn.BatchNorm2d):
            conv = n.args[0] if n.args else None
            if not (isinstance(conv, torch.fx.Node) and is_mod(conv, nn.Conv2d) and len(conv.users) == 1
                    and modules[conv.target].out_channels == m.num_features):
                raise UserError(f"{what}: BatchNorm {n.target} does not directly follow a convolution whose output "
                                "only it reads, so it cannot be folded into integer weights")
            plan.folds[conv.target] = n.target
            out_node[conv.target] = n
    producer_of = {node: path for path, node in out_node.items()}
    for path in plan.layers:
        if not isinstance(modules[path], nn.Conv2d):
            continue
        users = list(out_node[path].users)
        if len(users) == 1 and is_mod(users[0], _ACTIVATIONS):
            plan.fused[path] = users[0].target
        else:
            plan.own_output.add(path)
    for path in plan.layers:
        node = next(n for n in calls if n.target == path)
        arg = node.args[0] if node.args else None
        if isinstance(arg, torch.fx.Node) and is_mod(arg, _ACTIVATIONS):
            plan.sources[path] = ("act", arg.target)
        elif isinstance(arg, torch.fx.Node) and producer_of.get(arg) in plan.own_output:
            plan.sources[path] = ("out", producer_of[arg])
    return plan


def deploy_student(model: nn.Module, w_bits: int, a_bits: int, profile: str, storage_bits: int | None,
                   new_quant) -> nn.Module:  # noqa: ANN001 (the plugin's QuantAct factory: its options)
    """``model`` (a private copy of the teacher) as the student of a deployable profile, in place: every
    Conv2d and Linear an integer layer, every BN after a conv folded, a quantizer after every ReLU/ReLU6,
    and the integer path's own 8-bit quantizers where :func:`place` puts them."""
    plan = place(model, profile)
    folded = set(plan.folds.values())
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            path = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, DeployConv2d.from_float(child, w_bits))
            elif isinstance(child, nn.Linear):
                setattr(parent, child_name, DeployLinear.from_float(child, w_bits))
            elif path in folded:
                setattr(parent, child_name, FoldedBatchNorm.from_bn(child))
            elif isinstance(child, _ACTIVATIONS):
                setattr(parent, child_name, QuantizedActivation(child, new_quant(a_bits)))

    def own(bits: int) -> QuantAct:
        quant = new_quant(bits)
        quant.include_zero = True
        return quant

    for module in model.modules():
        if isinstance(module, QuantAct):
            module.include_zero = True
    for path in plan.layers:  # first every output quantizer, which later layers may read
        layer = model.get_submodule(path)
        if path in plan.own_output:
            layer.output_quant = own(CONTAINER_BITS)
            layer.output_path = f"{path}.output_quant"
        elif path in plan.fused:
            layer.output_path = f"{plan.fused[path]}.quant"
    for path in plan.layers:
        layer = model.get_submodule(path)
        bn_path = plan.folds.get(path)
        kind, where = plan.sources.get(path, ("own", path))
        if kind == "act":
            source, layer.source_path = model.get_submodule(where).quant, f"{where}.quant"
        elif kind == "out":
            source, layer.source_path = model.get_submodule(where).output_quant, f"{where}.output_quant"
        else:
            layer.input_quant = source = own(CONTAINER_BITS)
            layer.source_path = f"{path}.input_quant"
        layer.link(source, model.get_submodule(bn_path) if bn_path else None)
        layer.absorbed = tuple(p for p in (bn_path, plan.fused.get(path)) if p)
        layer.storage_bits = storage_bits
    return model
