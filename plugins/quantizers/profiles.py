"""Named, versioned quantizer profiles of the ``uniform`` quantizer (docs/methods/uniform.md#profiles).

Papers of the field report numbers under different quantization conventions: the ZeroQ lineage
(GDFQ, AdaDFQ, HAST, AKT, Qimera, IntraQ, AIT, SynQ) quantizes every layer alike with asymmetric
per-channel weights, the post-training line keeps the first and the last layer at 8 bits, and
some discussions use symmetric weights. A number means something only with its convention, so
the convention is one named option (``-o uniform.profile=NAME``) that travels with the trial:
in its spec (an option), its result (``certification.quantizer``) and its leaderboard row
(``profile``). A profile whose meaning changes gets a new version, never a silent edit.

Torch-free: the quantizer applies a profile, the result records its description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The profile of every trial run before profiles existed, and the default (it stays out of ids).
DEFAULT_PROFILE = "zsq-asym-pc"


@dataclass(frozen=True)
class Profile:
    """One quantization convention. ``first_last_bits``: the bit-width of the first and the last
    weight layer (in module registration order, which is forward order for every bundled teacher)
    and of the activation quantizer feeding the last layer; None = the trial's bits everywhere."""

    name: str
    version: int
    summary: str
    weight_symmetric: bool = False
    first_last_bits: int | None = None
    #: a deployable profile: the student follows this backend's integer rules (BN folded, integer bias,
    #: every input and output of an integer operator quantized) and exports to its integer operators
    backend: str | None = None
    #: the largest weight bit-width the profile executes exactly (packed storage: its width)
    max_w_bits: int = 8
    #: weights stored packed at this many bits (ONNX INT4 initializers), computed in int8 containers
    weight_storage_bits: int | None = None

    @property
    def deployable(self) -> bool:
        return self.backend is not None

    def describe(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The profile as a result records it: every axis of the convention (MQBench-style), with
        the quantizer's other options that change it (range estimator, extra output quantizers)."""
        options = options or {}
        weights = ("symmetric narrow-range (zero point 0, codes ±(2^(k−1) − 1)), range ±max|w|"
                   if self.weight_symmetric else "asymmetric, range [min, max]")
        layers = "every Conv2d and Linear weight"
        if self.first_last_bits is not None:
            layers += (f" at the trial's bits, except the first and the last weight layer at {self.first_last_bits} "
                       f"bits; activations after every ReLU/ReLU6, the one feeding the last layer at "
                       f"{self.first_last_bits} bits")
        else:
            layers += " and every activation after a ReLU/ReLU6 at the trial's bits"
        outputs = list(options.get("quantize_outputs") or [])
        if outputs:
            layers += f"; also the outputs of modules matching {outputs}"
        if self.deployable:
            return self._describe_deployable(options)
        return {
            "profile": self.name,
            "version": self.version,
            "summary": self.summary,
            "weights": f"per output channel, {weights}, recomputed at every weight update",
            "weight_granularity": "per-channel",
            "weight_symmetric": self.weight_symmetric,
            "activations": "per tensor, asymmetric [min, max] (after a ReLU: [0, max])",
            "activation_symmetric": False,
            "activation_range": options.get("range_tracking", "exact"),
            "activations_static": True,
            "first_last_bits": self.first_last_bits,
            "quantized_layers": layers,
            "input": "not quantized (the first layer sees FP images)",
            "batch_norm": "kept, not folded (the student's BN runs in eval mode with the teacher's statistics)",
        }


    def _describe_deployable(self, options: dict[str, Any]) -> dict[str, Any]:
        storage = (f"packed at {self.weight_storage_bits} bits (ONNX INT4 initializers), cast to int8 in the graph"
                   if self.weight_storage_bits else "int8 containers, codes clipped to the trial's bits")
        return {
            "profile": self.name,
            "version": self.version,
            "summary": self.summary,
            "backend": self.backend,
            "weights": "per output channel, symmetric narrow-range (zero point 0, codes ±(2^(k−1) − 1)) of the "
                       f"BN-folded weight, range ±max|w·γ/σ|, at most {self.max_w_bits} bits; storage {storage}",
            "weight_granularity": "per-channel",
            "weight_symmetric": True,
            "weight_storage_bits": self.weight_storage_bits,
            "activations": "per tensor, asymmetric uint8 (the range always holds 0), trial bits by clipping the "
                           "code range of the 8-bit container",
            "activation_symmetric": False,
            "activation_range": options.get("range_tracking", "exact"),
            "activations_static": True,
            "first_last_bits": None,
            "quantized_layers": "every Conv2d and Linear weight and every activation after a ReLU/ReLU6 at the "
                                "trial's bits; at 8 bits the network input, the outputs of convolutions that feed "
                                "anything but a ReLU (ResNet: the residual sum), and the input of every layer that "
                                "does not read an activation quantizer (the classifier's pooled input)",
            "input": "quantized to 8 bits (uint8, asymmetric per tensor)",
            "batch_norm": "folded into the convolution before weight quantization (w·γ/σ, β − μ·γ/σ with the "
                          "teacher's frozen statistics; γ and β trained)",
            "bias": "int32 codes at scale s_x·s_w",
            "requantization": "round half to even of the int32 accumulator times s_x·s_w/s_y, then the zero point, "
                              "saturated and clipped to the k-bit code range (ONNX Runtime's QLinearConv)",
        }


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(DEFAULT_PROFILE, 1, "the ZeroQ-lineage convention of GDFQ, AdaDFQ, HAST, AKT, Qimera, IntraQ, AIT and "
            "SynQ: asymmetric per-channel weights and per-tensor activations, every layer at the trial's bits"),
    Profile("first-last-8bit", 1, "as zsq-asym-pc, with the first and the last layer at 8 bits (the ZeroQ paper and "
            "the post-training line)", first_last_bits=8),
    Profile("sym-pc", 1, "as zsq-asym-pc, with symmetric per-channel weights (the convention of the IntraQ and AIT "
            "discussions)", weight_symmetric=True),
    Profile("ort-int8", 1, "deployable on ONNX Runtime's integer kernels (QLinearConv, MatMulInteger): BN folded, "
            "int8 symmetric per-channel weights, uint8 per-tensor activations, 8-bit input, int32 bias; trial bits "
            "<= 8 by clipping the code range", weight_symmetric=True, backend="onnxruntime"),
    Profile("ort-int4w", 1, "as ort-int8, with weights of at most 4 bits stored packed as ONNX INT4 (cast to "
            "int8 in the graph, computed in int8 kernels)", weight_symmetric=True, backend="onnxruntime",
            max_w_bits=4, weight_storage_bits=4),
)}
