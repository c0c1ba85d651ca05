"""The method card of the bundled quantizer (see :mod:`zsqbench.api.cards`)."""

from __future__ import annotations

from zsqbench.api import MethodCard

UNIFORM_CARD = MethodCard(
    method="asymmetric uniform quantizer (shared by GDFQ, AdaDFQ, HAST, AKT)",
    paper="as vendored by every paper of the family (ZeroQ's quantization utilities)",
    venue="ECCV 2020 – CVPR 2023 codebases",
    code="amirgholami/ZeroQ (the common ancestor; vendored by GDFQ, AdaDFQ, HAST, AKT)",
    commit="9715739",
    code_license="GPL-3.0; never copied",
    spec="docs/methods/uniform.md",
    differences=(
        "the doubly bias-corrected range EMA (S1) is reproduced as the code runs it; range tracking and "
        "freezing go through the quantizer's calibration state, not the epoch number",
        "fused one-node fake quantization and STE: bit-identical to the reference formula, half-to-even ties "
        "included (ste=reference keeps the reference's own ops)",
    ),
    verified=("grid, clamping and half-to-even ties on hand values; the range recurrence 1, 5.263, 17.85, "
              "≈ 3945 at the 21st update, 1.000 after 200; 19 activation and 22 weight quantizers in ResNet-20 "
              "(tests/plugins/test_quantizer.py)",),
)
