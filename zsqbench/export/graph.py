"""The exported graph: the student with integer weights and QCDQ activations, as ONNX.

The student is copied and each module its quantizer lists (:meth:`Quantizer.integer_layers`) is
replaced by one whose forward is an autograd function with an ONNX ``symbolic``: a weight becomes
its integer codes (int8/uint8/int32 buffers, so they are stored as integer initializers) dequantized
per output channel by ``DequantizeLinear``; an activation quantizer becomes ``QuantizeLinear`` →
``Clip`` (only where the k-bit range is narrower than the container) → ``DequantizeLinear``. Every other
module (BN, ReLU, residual adds, pooling) is exported as PyTorch's exporter exports it.

The exporter is ``torch.onnx.export(..., dynamo=False)`` (TorchScript-based). The dynamo exporter is
the default since PyTorch 2.9, but it needs ``onnxscript``, took 4 s instead of 0.6 s for ResNet-20
here, and its optimizer fuses BN into FP convolutions; the TorchScript exporter turns an autograd
function's ``symbolic`` into exactly the nodes written there. It is deprecated in 2.9+, so the call is
in one place (:func:`torch_export`) with its warning silenced, and tests fail if it goes away.

Graph edits with ``onnx.helper``/``numpy_helper`` follow. The Identity nodes the exporter leaves
after initializers it deduplicated are removed. BatchNormalization stays a node of its own by default,
as the student computes it (BN is not folded, docs/methods/uniform.md#what-is-quantized): ONNX Runtime
then reproduces the student to float rounding, but it runs every convolution in float (a
DequantizeLinear'd weight, BN between the convolution and the next quantizer), and the
quantize/dequantize work comes on top: slower than FP32. ``fold_bn=True`` folds each BN
that alone reads a convolution with a per-channel DequantizeLinear weight into that weight's scale
and the convolution's bias (scale·a and bias·a + β − μ·a with a = γ/√(σ²+ε)): the integer codes are
untouched, and a convolution whose output then goes straight to an activation quantizer has the
DQ → Conv → (Relu) → Q form that ONNX Runtime fuses into QLinearConv. Those integer kernels round the
bias to int32 and requantize in fixed point, so they do not reproduce the student's float arithmetic
exactly (see README, "Deployment").
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api.quantizer import IntegerActivation, IntegerLayer, IntegerWeight
from zsqbench.errors import UserError
from zsqbench.export.mapping import OnnxQuant, onnx_quant

OPSET = 17  # per-axis DequantizeLinear needs 13; 17 is read by every current runtime
INPUT, OUTPUT = "input", "logits"


class _DequantizeWeight(torch.autograd.Function):
    """(codes − zero_point)·scale per output channel; exported as one DequantizeLinear (axis 0)."""

    @staticmethod
    def forward(ctx, codes: Tensor, scale: Tensor, zero_point: Tensor,  # type: ignore[override]
                with_zero_point: bool) -> Tensor:
        shape = (-1,) + (1,) * (codes.dim() - 1)
        return (codes.to(torch.float32) - zero_point.to(torch.float32).view(shape)) * scale.view(shape)

    @staticmethod
    def symbolic(g, codes, scale, zero_point, with_zero_point):  # noqa: ANN001, ANN205 (TorchScript values)
        if not with_zero_point:  # int32 codes: DequantizeLinear's int32 form has no zero point
            return g.op("DequantizeLinear", codes, scale, axis_i=0)
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=0)


class _QuantizeClipDequantize(torch.autograd.Function):
    """ONNX's QuantizeLinear → Clip → DequantizeLinear, per tensor."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, lo: Tensor, hi: Tensor,  # type: ignore[override]
                clip: bool) -> Tensor:
        c = torch.clamp(torch.round(x / scale) + zero_point.float(), lo.float(), hi.float())
        return (c - zero_point.float()) * scale

    @staticmethod
    def symbolic(g, x, scale, zero_point, lo, hi, clip):  # noqa: ANN001, ANN205
        q = g.op("QuantizeLinear", x, scale, zero_point)
        if clip:
            q = g.op("Clip", q, lo, hi)
        return g.op("DequantizeLinear", q, scale, zero_point)


class IntegerWeightLayer(nn.Module):
    """A Conv2d or Linear whose weight is stored as integer codes and dequantized on the fly."""

    def __init__(self, float_module: nn.Module, quant: OnnxQuant, codes: np.ndarray) -> None:
        super().__init__()
        if isinstance(float_module, nn.Conv2d) and float_module.padding_mode != "zeros":
            raise ValueError("only zero-padded convolutions are exported")
        self.layer = float_module
        del self.layer.weight  # the codes replace it
        self.register_buffer("codes", torch.from_numpy(codes.copy()))
        self.register_buffer("scale", torch.from_numpy(quant.scale.copy()))
        self.register_buffer("zero_point", torch.from_numpy(quant.zero_point.copy()))
        self.with_zero_point = quant.container != "int32"

    def forward(self, x: Tensor) -> Tensor:
        w = _DequantizeWeight.apply(self.codes, self.scale, self.zero_point, self.with_zero_point)
        m = self.layer
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, w, m.bias)


class QCDQ(nn.Module):
    """A per-tensor activation quantizer in QCDQ form (its input, quantized; nothing else)."""

    def __init__(self, quant: OnnxQuant) -> None:
        super().__init__()
        dtype = torch.from_numpy(np.zeros(0, quant.dtype)).dtype
        self.clip = quant.needs_clip
        self.register_buffer("scale", torch.from_numpy(quant.scale.copy()))
        self.register_buffer("zero_point", torch.from_numpy(quant.zero_point.copy()))
        self.register_buffer("lo", torch.tensor(int(quant.code_min), dtype=dtype))
        self.register_buffer("hi", torch.tensor(int(quant.code_max), dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return _QuantizeClipDequantize.apply(x, self.scale, self.zero_point, self.lo, self.hi, self.clip)


@dataclass(frozen=True)
class ExportedLayer:
    """One quantizer as exported: where, what kind, its ONNX parameters, its tensor's size."""

    path: str
    kind: str  # weight or activation
    quant: OnnxQuant
    numel: int  # weights: parameters; activations: 0 (nothing stored)
    codes: np.ndarray | None = None


def replace_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` (dotted, as ``named_modules`` lists it) inside ``root``."""
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def integer_view(student: nn.Module, layers: list[IntegerLayer]) -> tuple[nn.Module, list[ExportedLayer]]:
    """A copy of the student with every listed quantizer replaced by its integer form."""
    view = copy.deepcopy(student).eval().cpu()
    exported = []
    for layer in layers:
        if isinstance(layer, IntegerWeight):
            quant = onnx_quant(layer.grid, f"weight of {layer.path}", weight=True)
            codes = quant.codes(layer.codes)
            replace_module(view, layer.path, IntegerWeightLayer(copy.deepcopy(layer.float_module).cpu(), quant, codes))
            exported.append(ExportedLayer(layer.path, "weight", quant, int(codes.size), codes))
        elif isinstance(layer, IntegerActivation):
            quant = onnx_quant(layer.grid, f"activation quantizer {layer.path}", weight=False)
            replace_module(view, layer.path, QCDQ(quant))
            exported.append(ExportedLayer(layer.path, "activation", quant, 0))
        else:
            raise TypeError(f"unknown integer layer {layer!r}")
    return view, exported


def torch_export(model: nn.Module, example: Tensor) -> onnx.ModelProto:
    """``torch.onnx.export`` (TorchScript-based, see the module docstring) with a dynamic batch axis."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        try:
            torch.onnx.export(model.eval(), (example,), buf, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=[OUTPUT], do_constant_folding=True,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:  # an operator ONNX lacks, say
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"PyTorch's ONNX exporter cannot export this network ({first})") from None
    return onnx.load_from_string(buf.getvalue())


def drop_identities(model: onnx.ModelProto) -> int:
    """Remove the Identity nodes the exporter puts after initializers it deduplicated (equal buffers,
    e.g. the same scale in two layers): their readers read the initializer itself."""
    graph = model.graph
    kept_outputs = {o.name for o in graph.output}
    inits = {t.name for t in graph.initializer}
    rename = {n.output[0]: n.input[0] for n in graph.node
              if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in kept_outputs}
    rename_inputs(graph, rename)
    dropped = [n for n in graph.node if n.op_type == "Identity" and n.output[0] in rename]
    for n in dropped:
        graph.node.remove(n)
    return len(dropped)


def rename_inputs(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Every node input named in ``rename`` reads the value it maps to instead."""
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for n in graph.node for name in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold each BatchNormalization that alone reads a Conv with a per-channel DequantizeLinear weight
    into that weight's scale and the Conv's bias (see the module docstring). Returns how many.

    The folded scale and bias are new initializers (an initializer may be shared by several layers)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    folded = []
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or readers.get(conv.output[0]) != 1:
            continue
        dq = producer.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or readers.get(dq.output[0]) != 1:
            continue
        params = [dq.input[1], *bn.input[1:5]] + ([conv.input[2]] if len(conv.input) > 2 and conv.input[2] else [])
        if not all(name in inits for name in params):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in bn.input[1:5])
        a = gamma / np.sqrt(var + eps)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        bias = beta - mean * a
        if len(params) == 6:
            bias = bias + numpy_helper.to_array(inits[params[5]]).astype(np.float64) * a
        stem = f"{bn.output[0]}.folded"
        graph.initializer.extend([numpy_helper.from_array((scale * a).astype(np.float32), f"{stem}_scale"),
                                  numpy_helper.from_array(bias.astype(np.float32), f"{stem}_bias")])
        dq.input[1] = f"{stem}_scale"
        del conv.input[2:]
        conv.input.append(f"{stem}_bias")
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        graph.node.remove(bn)
    drop_unused_initializers(graph)
    return len(folded)


def build_onnx(view: nn.Module, example: Tensor, metadata: dict[str, str], fold_bn: bool = False) -> tuple[bytes, int]:
    """The exported model's bytes (checked by ``onnx.checker``) and how many BNs were folded."""
    model = torch_export(view, example)
    drop_identities(model)
    folded = fold_batchnorm(model) if fold_bn else 0
    model.producer_name = "zsqbench"
    model.doc_string = ("A zsqbench student: integer weights (DequantizeLinear per output channel), activations "
                        "quantized as QuantizeLinear -> Clip -> DequantizeLinear; see quantization.json")
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(), folded


def build_fp_onnx(model: nn.Module, example: Tensor) -> bytes:
    """An FP network exported the same way (same exporter, opset and axes), for comparisons."""
    return torch_export(copy.deepcopy(model).eval().cpu(), example).SerializeToString()


def describe_graph(model_bytes: bytes) -> dict[str, object]:
    """Opset, IR version and node counts of a serialized model."""
    model = onnx.load_from_string(model_bytes)
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "ir_version": model.ir_version, "nodes": dict(sorted(counts.items()))}
