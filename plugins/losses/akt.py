"""AKT's student loss: logit loss + refined feature distillation (RFD), docs/methods/akt.md.

RFD = λ·Σ_maps Σ_b [KL_sp + KL_ch] over the outputs of every residual-unit body (9 maps in
ResNet-20), with teacher maps detached so the loss is non-zero (the released code's RFD is
identically 0, defect D3). Returns ``spatial`` and ``channel`` besides ``feature`` (their
sum) so diagnostics show each branch. Code defaults, paper switches (``mode="paper"``,
``akt_alpha``, ``map_reduction``, ``taps``, ``logit``): see
:mod:`zsqbench_plugins.losses._feature`.
"""

from __future__ import annotations

from zsqbench.api import hookimpl
from zsqbench_plugins.losses._feature import AttentionDistillationLoss, akt_paper_schedule
from zsqbench_plugins.losses.cards import AKT_CARD


class AKTLoss(AttentionDistillationLoss):
    name = "akt"
    description = "AKT: logit loss + λ·(spatial + channel attention KL) on residual-unit features (RFD)"
    branches = ("spatial", "channel")
    card = AKT_CARD
    budget_overrides = (akt_paper_schedule("akt"),)


@hookimpl
def register_losses(register) -> None:
    register(AKTLoss)
