"""Which of the exported model's disagreements with the student are rounding ties in its activations.

A student whose activations sit on a rounding boundary (m + ½ of a grid) has codes that ONNX Runtime
and PyTorch round to different neighbours: ONNX Runtime computes fl(x / fl(1/S)) where the student
computes fl(fl(S·x) − Z) (:mod:`zsqbench.export.mapping`). One such code can flip a prediction on a
clear logit margin, with no export error. Measured: a poorly trained smoke student whose activations
met one value on a tie (x = 0.5/S) in 27 % of its images; 64 codes within 3e-7 of that tie were
rounded differently, and 7 of 200 predictions changed.

So a disagreement on a clear margin is put down to rounding only when ONNX Runtime's own run shows it:
the model is run again on that image with every activation quantizer's input x and output y as extra
outputs, and each code ONNX Runtime chose, q = rint(y·S − Z), must be the student's quantizer applied
to that very input (clamp(round(S·x − Z)), docs/methods/uniform.md#the-quantization-function),
except at a tie. Then every activation of that image is the student's function of its input, and
what moved its logits is float rounding
amplified through codes rounded at ties (in either runtime's run: the tie where the two runs parted
may be one the student rounded away from half-to-even). A wrong scale, zero point or range moves
codes away from ties, which this catches image by image; a wrong weight or float layer moves every
image's logits (the median criterion of :mod:`zsqbench.export.runtime`).

**How close to a tie is a tie.** Each runtime's S·x − Z is within 2^-24·(|S·x| + |S·x − Z|) (the
student: the product and the difference, each rounded once) or 2^-23·|S·x| (ONNX Runtime: 1/S and
the quotient) of the exact value, so where they round to different codes the exact value is within
2^-23·(|S·x| + |S·x − Z|) of m + ½; ``TIE_RELATIVE`` = 2^-22 allows twice that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from zsqbench.assets.test_set import NormalizedImages
from zsqbench.export.graph import INPUT, OUTPUT, ExportedLayer
from zsqbench.export.mapping import OnnxQuant
from zsqbench.export.runtime import session

TIE_RELATIVE = 2.0**-22
PIXELS_PER_BATCH = 16 * 32 * 32  # 16 CIFAR images, 1 at 224 px: the probed outputs are every activation


@dataclass(frozen=True)
class Probe:
    """One activation quantizer of the graph: its input, its dequantized output, the student's grid."""

    x: str
    y: str
    quant: OnnxQuant


def probed_model(model_bytes: bytes, layers: list[ExportedLayer]) -> tuple[bytes, list[Probe]]:
    """The model with each QuantizeLinear's input and its DequantizeLinear's output as graph outputs,
    each matched to the activation quantizer it exports (by the node's module scope, else by its
    scale's initializer name)."""
    model = onnx.load_from_string(model_bytes)
    grids = {layer.path: layer.quant for layer in layers if layer.kind == "activation"}
    reader = {name: n for n in model.graph.node for name in n.input}
    probes, outputs = [], {o.name for o in model.graph.output}
    for node in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        after = reader.get(node.output[0])
        if after is not None and after.op_type == "Clip":
            after = reader.get(after.output[0])
        scope = node.name.strip("/").rpartition("/")[0].replace("/", ".")
        quant = grids.get(scope) or grids.get(node.input[1].removesuffix(".scale"))
        if after is None or after.op_type != "DequantizeLinear" or quant is None:
            raise ValueError(f"QuantizeLinear {node.name} is not one of the student's activation quantizers")
        probes.append(Probe(node.input[0], after.output[0], quant))
        for name in (node.input[0], after.output[0]):
            if name not in outputs:
                model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                outputs.add(name)
    return model.SerializeToString(), probes


def codes_against_grid(x: np.ndarray, y: np.ndarray, quant: OnnxQuant) -> np.ndarray:
    """Per image (axis 0): whether some code ONNX Runtime chose differs from the grid's other than by
    one step at a tie that decides a code (both neighbours in the k-bit range)."""
    S, Z, half = float(quant.S), float(quant.Z), 2 ** (quant.bits - 1)
    sx = S * x.astype(np.float64)
    t = sx - Z
    theirs = np.rint(y.astype(np.float64) * S - Z)
    ours = np.clip(np.rint(t), -half, half - 1)
    below = np.floor(t)
    tie = (np.abs(t - below - 0.5) <= TIE_RELATIVE * (np.abs(sx) + np.abs(t))) & (below >= -half) & (below <= half - 2)
    off = (theirs != ours) & ~(tie & (np.abs(theirs - ours) == 1))
    return off.reshape(len(x), -1).any(1)


def code_tie_images(model_bytes: bytes, layers: list[ExportedLayer], images: np.ndarray, inputs: NormalizedImages,
                    onnx_out: np.ndarray, tol: float, threads: int, optimize: bool = True) -> np.ndarray:
    """Those of ``images`` whose disagreement ONNX Runtime's activations put down to rounding ties (see
    the module docstring). ``onnx_out``: the exported model's logits, which the probed run (the same
    session settings) must reproduce within ``tol`` (runtime.py's rounding_tol): else it computed
    something else, and explains nothing."""
    probed, probes = probed_model(model_bytes, layers)
    sess = session(probed, threads, optimize)
    names = [o.name for o in sess.get_outputs()]
    explained: list[np.ndarray] = []
    for start, stop in _batches(images, inputs):
        idx = images[start:stop]
        x = np.concatenate([inputs[i : i + 1].numpy() for i in idx])
        outs = dict(zip(names, sess.run(None, {INPUT: x})))
        ok = np.abs(outs[OUTPUT].astype(np.float64) - onnx_out[idx]).max(1) <= tol
        for probe in probes:
            ok &= ~codes_against_grid(outs[probe.x], outs[probe.y], probe.quant)
        explained.append(idx[ok])
    return np.concatenate(explained) if explained else np.zeros(0, dtype=np.int64)


def _batches(images: np.ndarray, inputs: NormalizedImages) -> list[tuple[int, int]]:
    if not len(images):
        return []
    pixels = int(np.prod(inputs[0:1].shape[2:]))
    size = max(1, PIXELS_PER_BATCH // pixels)
    return [(i, min(i + size, len(images))) for i in range(0, len(images), size)]
