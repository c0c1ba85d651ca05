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


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(DEFAULT_PROFILE, 1, "the ZeroQ-lineage convention of GDFQ, AdaDFQ, HAST, AKT, Qimera, IntraQ, AIT and "
            "SynQ: asymmetric per-channel weights and per-tensor activations, every layer at the trial's bits"),
    Profile("first-last-8bit", 1, "as zsq-asym-pc, with the first and the last layer at 8 bits (the ZeroQ paper and "
            "the post-training line)", first_last_bits=8),
    Profile("sym-pc", 1, "as zsq-asym-pc, with symmetric per-channel weights (the convention of the IntraQ and AIT "
            "discussions)", weight_symmetric=True),
)}
