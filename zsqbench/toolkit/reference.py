"""The switch between the fused (default) and the reference formulations of shared computations.

Some computations have a fused form that does the same mathematics in fewer operations (the
BN-statistics loss over all layers in one reduction, the attention losses over equal-shaped maps
in one call): they cost less per iteration but may sum in another order, so the last bits of a
trajectory can differ. ``ZSQBENCH_REFERENCE_KERNELS=1`` selects the reference forms everywhere:
``tests/trial/test_regression.py`` runs with it to reproduce the pre-redesign numbers bit for bit, and
``tests/trial/test_fused_ops.py`` bounds each fused form against its reference in float64.
"""

from __future__ import annotations

import os

ENV = "ZSQBENCH_REFERENCE_KERNELS"


def use_reference() -> bool:
    """True when the reference formulations are asked for (read when a loss is built, not per step)."""
    return os.environ.get(ENV, "") not in ("", "0")
