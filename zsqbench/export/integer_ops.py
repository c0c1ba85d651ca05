"""The exact integer export of a deployable profile (docs/deployment.md#deployable-profiles): every
convolution a ``QLinearConv``, the classifier a ``MatMulInteger``, in ONNX Runtime's integer kernels.

The student of such a profile already computes what those kernels compute (BN folded, int32 bias at
s_x·s_w, every input and output of an integer operator on an 8-bit grid: plugins/quantizers/_deploy.py),
and its quantizer lists each layer as one integer operator (:class:`~zsqbench.api.quantizer.IntegerWeight`
with ``input``, ``output``, ``bias_codes`` and ``absorbed``). Here each becomes, in the traced graph,

    QuantizeLinear(x; s_x, z_x) → QLinearConv(·, int8 weights per channel, int32 bias; s_y, z_y) [→ Clip] → DequantizeLinear

(the classifier: QuantizeLinear → MatMulInteger → Add(int32 bias) → Cast → Mul(s_x·s_w): float logits), the
modules it absorbs (the folded BN, the ReLU its output zero point 0 clips) become identities, and every
other activation quantizer is QuantizeLinear → Clip → DequantizeLinear as in :mod:`~zsqbench.export.graph`
(each DequantizeLinear finally written as Cast → Sub → Mul: :func:`explicit_dequantize` says why).
Then each DequantizeLinear → QuantizeLinear pair with the same scale and zero point is removed (it maps a
code to itself: c − z is a small integer, so ((c − z)·s)/s rounds back to it), so codes flow from one
integer operator to the next; what remains in float is what the student computes in float between
quantizers (the residual sums, pooling, the flatten). With packed storage (``storage_bits`` 4, profile
``ort-int4w``), the weight initializers are ONNX INT4 and a Cast to int8 feeds each operator (opset 21).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api.quantizer import IntegerActivation, IntegerLayer, IntegerWeight
from zsqbench.errors import UserError
from zsqbench.export.graph import (
    QCDQ,
    ExportedLayer,
    drop_identities,
    drop_unused_initializers,
    rename_inputs,
    replace_module,
    torch_export,
)
from zsqbench.export.mapping import OnnxQuant, onnx_quant

INT4_OPSET = 21  # INT4 tensors and their Cast
INT4_IR_VERSION = 10


def is_integer_program(layers: list[IntegerLayer]) -> bool:
    """Whether the quantizer described its student as integer operators (a deployable profile)."""
    return any(isinstance(layer, IntegerWeight) and layer.input is not None for layer in layers)


class _IntegerConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, xs: Tensor, xz: Tensor, w: Tensor, ws: Tensor, wz: Tensor,  # type: ignore[override]
                ys: Tensor, yz: Tensor, b: Tensor, lo: Tensor, hi: Tensor, attrs: tuple) -> Tensor:
        stride, padding, dilation, groups, clip, _ = attrs
        xq = torch.clamp(torch.round(x / xs) + xz.float(), 0, 255) - xz.float()
        acc = F.conv2d(xq, w.float(), b.float(), stride, padding, dilation, groups)
        y = torch.round(acc * (xs * ws.view(1, -1, 1, 1) / ys)) + yz.float()
        return (torch.clamp(y, lo.float(), hi.float()) - yz.float()) * ys

    @staticmethod
    def symbolic(g, x, xs, xz, w, ws, wz, ys, yz, b, lo, hi, attrs):  # noqa: ANN001, ANN205
        stride, padding, dilation, groups, clip, kernel = attrs
        xq = g.op("QuantizeLinear", x, xs, xz)
        yq = g.op("QLinearConv", xq, xs, xz, w, ws, wz, ys, yz, b, strides_i=list(stride),
                  pads_i=list(padding) * 2, dilations_i=list(dilation), group_i=groups, kernel_shape_i=list(kernel))
        if clip:
            yq = g.op("Clip", yq, lo, hi)
        return g.op("DequantizeLinear", yq, ys, yz)


class _IntegerLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, xs: Tensor, xz: Tensor, wt: Tensor, b: Tensor,  # type: ignore[override]
                out_scale: Tensor) -> Tensor:
        xq = torch.clamp(torch.round(x / xs) + xz.float(), 0, 255) - xz.float()
        return (xq @ wt.float() + b.float()) * out_scale

    @staticmethod
    def symbolic(g, x, xs, xz, wt, b, out_scale):  # noqa: ANN001, ANN205
        xq = g.op("QuantizeLinear", x, xs, xz)
        acc = g.op("Add", g.op("MatMulInteger", xq, wt, xz), b)
        return g.op("Mul", g.op("Cast", acc, to_i=TensorProto.FLOAT), out_scale)


def _scalar(quant: OnnxQuant) -> tuple[Tensor, Tensor]:
    dtype = torch.from_numpy(np.zeros(0, quant.dtype)).dtype
    return torch.tensor(float(quant.scale), dtype=torch.float32), torch.tensor(int(quant.zero_point), dtype=dtype)


class IntegerOperator(nn.Module):
    """One integer operator of the exported graph (module docstring): its input quantizer's parameters,
    its integer weights and bias, and (a convolution) its output quantizer's."""

    def __init__(self, layer: IntegerWeight, w_quant: OnnxQuant, codes: np.ndarray, x_quant: OnnxQuant,
                 y_quant: OnnxQuant | None) -> None:
        super().__init__()
        m = layer.float_module
        self.conv = isinstance(m, nn.Conv2d)
        if self.conv == (y_quant is None):
            raise UserError(f"{layer.path}: an integer convolution needs an output quantizer and the classifier "
                            "none; the quantizer described another layout")
        xs, xz = _scalar(x_quant)
        self.register_buffer("xs", xs)
        self.register_buffer("xz", xz)
        out = codes.shape[0]
        bias = (layer.bias_codes.numpy() if layer.bias_codes is not None else np.zeros(out, dtype=np.int64))
        if np.abs(bias).max(initial=0) > 2**31 - 1:
            raise UserError(f"{layer.path}: its bias does not fit int32 at scale s_x·s_w")
        self.register_buffer("b", torch.from_numpy(bias.astype(np.int32)))
        if self.conv:
            ys, yz = _scalar(y_quant)  # type: ignore[arg-type]
            self.register_buffer("w", torch.from_numpy(codes.astype(np.int8)))
            self.register_buffer("ws", torch.from_numpy(w_quant.scale.astype(np.float32)))
            self.register_buffer("wz", torch.zeros(out, dtype=torch.int8))
            self.register_buffer("ys", ys)
            self.register_buffer("yz", yz)
            self.register_buffer("lo", torch.tensor(int(y_quant.code_min), dtype=yz.dtype))  # type: ignore[union-attr]
            self.register_buffer("hi", torch.tensor(int(y_quant.code_max), dtype=yz.dtype))  # type: ignore[union-attr]
            self.attrs = (tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups, y_quant.needs_clip,  # type: ignore[union-attr]
                          tuple(m.kernel_size))
        else:
            self.register_buffer("wt", torch.from_numpy(np.ascontiguousarray(codes.astype(np.int8).T)))
            out_scale = 1.0 / (x_quant.S.astype(np.float64) * w_quant.S.astype(np.float64))
            self.register_buffer("out_scale", torch.from_numpy(out_scale.astype(np.float32)))

    def forward(self, x: Tensor) -> Tensor:
        if self.conv:
            return _IntegerConv.apply(x, self.xs, self.xz, self.w, self.ws, self.wz, self.ys, self.yz, self.b,
                                      self.lo, self.hi, self.attrs)
        return _IntegerLinear.apply(x, self.xs, self.xz, self.wt, self.b, self.out_scale)


def integer_ops_view(student: nn.Module, layers: list[IntegerLayer]) -> tuple[nn.Module, list[ExportedLayer], int]:
    """A copy of the student with every integer operator in place, the modules they absorb as identities,
    and the other activation quantizers in QCDQ form; and how many BNs were folded."""
    view = copy.deepcopy(student).eval().cpu()
    acts = {layer.path: onnx_quant(layer.grid, f"activation quantizer {layer.path}", weight=False)
            for layer in layers if isinstance(layer, IntegerActivation)}
    ops = [layer for layer in layers if isinstance(layer, IntegerWeight)]
    plain = [op.path for op in ops if op.input is None]
    if plain:
        raise UserError(f"{plain[0]} is not an integer operator; a deployable profile makes every layer one")
    owned = [op.path for op in ops] + [p for op in ops for p in op.absorbed]
    exported, folded = [], 0
    for op in ops:
        if op.input not in acts or (op.output is not None and op.output not in acts):
            raise UserError(f"{op.path} reads or writes a quantizer the student does not list ({op.input}, {op.output})")
        w_quant = onnx_quant(op.grid, f"weight of {op.path}", weight=True)
        if w_quant.container != "int8" or np.any(w_quant.zero_point != 0):
            raise UserError(f"weight of {op.path} is not symmetric int8 (zero point 0), which QLinearConv needs")
        codes = w_quant.codes(op.codes)
        module = IntegerOperator(op, w_quant, codes, acts[op.input], acts.get(op.output) if op.output else None)
        replace_module(view, op.path, module)
        for path in op.absorbed:
            folded += isinstance(view.get_submodule(path), nn.BatchNorm2d)
            replace_module(view, path, nn.Identity())
        exported.append(ExportedLayer(op.path, "weight", w_quant, int(codes.size), codes))
    for path, quant in acts.items():
        if not any(path == o or path.startswith(o + ".") for o in owned):
            replace_module(view, path, QCDQ(quant))
        exported.append(ExportedLayer(path, "activation", quant, 0))
    return view, exported, folded


# ------------------------------------------------------------------ graph edits


def _values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def drop_requantize_pairs(model: onnx.ModelProto) -> int:
    """Remove each QuantizeLinear whose input is a DequantizeLinear with the same scale, zero point and
    type: its readers read the DequantizeLinear's integer input (exact: see the module docstring)."""
    graph = model.graph
    init = _values(graph)
    producer = {out: n for n in graph.node for out in n.output}

    def same(a: str, b: str) -> bool:
        return a in init and b in init and init[a].dtype == init[b].dtype and np.array_equal(init[a], init[b])

    rename, dropped = {}, []
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        dq = producer.get(q.input[0])
        if (dq is not None and dq.op_type == "DequantizeLinear" and len(dq.input) == 3 and len(q.input) == 3
                and same(dq.input[1], q.input[1]) and same(dq.input[2], q.input[2])):
            rename[q.output[0]] = dq.input[0]
            dropped.append(q)
    rename_inputs(graph, rename)
    for n in dropped:
        graph.node.remove(n)
    _drop_dead(graph)
    return len(dropped)


def explicit_dequantize(model: onnx.ModelProto) -> int:
    """Write one DequantizeLinear of each residual sum and those entering pooling as Cast → Sub(zero point)
    → Mul(scale), the same float operations. ONNX Runtime fuses DequantizeLinear →
    Add → (Relu) → QuantizeLinear into its QLinearAdd (and pooling into QLinearAveragePool), whose kernels
    requantize in their own fixed-point arithmetic: measured on ResNet-20 W4A8, it moved the median image's
    logits by 0.11 where the unfused graph agrees with the student to 1e-6. With one input not a
    DequantizeLinear nothing matches those fusions, and the float ops compute what the student computes
    (the other input keeps its one fused DequantizeLinear, which costs less than three operators)."""
    graph = model.graph
    init = _values(graph)
    producer = {out: n for n in graph.node for out in n.output}
    chosen: set[str] = set()  # the DequantizeLinear nodes to rewrite, by output name
    for node in graph.node:
        dqs = [name for name in node.input if name in producer and producer[name].op_type == "DequantizeLinear"]
        if node.op_type in ("Add", "Sub", "Mul") and dqs and len(dqs) == len(node.input):
            chosen.add(dqs[0])  # one explicit input is enough to match no binary fusion
        elif node.op_type in ("AveragePool", "GlobalAveragePool"):
            chosen.update(dqs)
    replaced = 0
    for node in list(graph.node):
        if node.op_type != "DequantizeLinear" or node.output[0] not in chosen or len(node.input) != 3 \
                or node.input[1] not in init or init[node.input[1]].ndim or node.input[2] not in init:
            continue
        stem = node.output[0]
        zero = numpy_helper.from_array(init[node.input[2]].astype(np.float32), f"{stem}.zero_point_f")
        graph.initializer.append(zero)
        new = [helper.make_node("Cast", [node.input[0]], [f"{stem}.f"], to=TensorProto.FLOAT, name=f"{stem}.cast"),
               helper.make_node("Sub", [f"{stem}.f", zero.name], [f"{stem}.c"], name=f"{stem}.sub"),
               helper.make_node("Mul", [f"{stem}.c", node.input[1]], [stem], name=f"{stem}.mul")]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, n in enumerate(new):
            graph.node.insert(at + offset, n)
        replaced += 1
    return replaced


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Nodes whose outputs nobody reads (iterated), then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    drop_unused_initializers(graph)


def pack_int4(model: onnx.ModelProto) -> int:
    """Store every integer weight (QLinearConv's, MatMulInteger's) as an ONNX INT4 initializer read through
    a Cast to int8 (ONNX Runtime folds the Cast once, at load); opset and IR version raised to INT4's."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    packed = 0
    for node in list(graph.node):
        slot = {"QLinearConv": 3, "MatMulInteger": 1}.get(node.op_type)
        if slot is None or node.input[slot] not in inits:
            continue
        name = node.input[slot]
        codes = numpy_helper.to_array(inits[name])
        if codes.dtype != np.int8 or codes.min(initial=0) < -8 or codes.max(initial=0) > 7:
            raise UserError(f"weight {name} does not fit 4 bits; it cannot be stored as INT4")
        graph.initializer.remove(inits.pop(name))
        flat = codes.astype(np.uint8).ravel() & 0x0F  # two's complement nibbles, the first in the low half
        flat = np.append(flat, np.uint8(0)) if flat.size % 2 else flat
        packed_bytes = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()
        graph.initializer.append(helper.make_tensor(f"{name}.int4", TensorProto.INT4, codes.shape, packed_bytes,
                                                    raw=True))
        cast = helper.make_node("Cast", [f"{name}.int4"], [f"{name}.int8"], to=TensorProto.INT8, name=f"{name}.unpack")
        graph.node.insert(list(graph.node).index(node), cast)
        node.input[slot] = f"{name}.int8"
        packed += 1
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, INT4_OPSET)
    model.ir_version = max(model.ir_version, INT4_IR_VERSION)
    return packed


def build_integer_onnx(view: nn.Module, example: Tensor, metadata: dict[str, str], storage_bits: int | None
                       ) -> bytes:
    """The integer model's bytes, checked by ``onnx.checker``."""
    model = torch_export(view, example)
    drop_identities(model)
    drop_requantize_pairs(model)
    explicit_dequantize(model)
    _drop_dead(model.graph)
    if storage_bits is not None:
        if storage_bits != 4:
            raise UserError(f"packed storage at {storage_bits} bits: ONNX has INT4 and INT8 only")
        pack_int4(model)
    model.producer_name = "zsqbench"
    model.doc_string = ("A zsqbench student of a deployable profile: QLinearConv and MatMulInteger on integer codes "
                        "(zsqbench/export/integer_ops.py); see quantization.json")
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def integer_counts(model_bytes: bytes) -> dict[str, int]:
    """How many convolutions and matrix products the graph computes on integers and in float."""
    nodes = [n.op_type for n in onnx.load_from_string(model_bytes).graph.node]
    return {"integer_convs": nodes.count("QLinearConv") + nodes.count("ConvInteger"),
            "float_convs": nodes.count("Conv"),
            "integer_matmuls": nodes.count("MatMulInteger") + nodes.count("QLinearMatMul"),
            "float_matmuls": nodes.count("MatMul") + nodes.count("Gemm")}


def integer_sizes(model_bytes: bytes, layers: list[ExportedLayer]) -> dict[str, int]:
    """Bytes of the model's tensors at the true bit-widths (each weight at its bits, everything else as
    stored: int32 biases, scales, zero points) and as stored (INT4 packed two to a byte), and the file."""
    model = onnx.load_from_string(model_bytes)
    w_bits = max((layer.quant.bits for layer in layers if layer.kind == "weight"), default=8)
    readers = {n.input[i] for n in model.graph.node
               for i in ({"QLinearConv": (3,), "MatMulInteger": (1,), "Cast": (0,)}.get(n.op_type, ()))}
    true_bits = stored = 0.0
    quantized = 0
    for tensor in model.graph.initializer:
        n = int(np.prod(tensor.dims)) if tensor.dims else 1
        nbytes = (n + 1) // 2 if tensor.data_type == TensorProto.INT4 else numpy_helper.to_array(tensor).nbytes
        stored += nbytes
        if tensor.name in readers and len(tensor.dims) >= 2:
            true_bits += n * w_bits / 8
            quantized += n
        else:
            true_bits += nbytes
    return {"true_bits_bytes": int(round(true_bits)), "stored_tensor_bytes": int(stored),
            "file_bytes": len(model_bytes), "quantized_weights": quantized}
