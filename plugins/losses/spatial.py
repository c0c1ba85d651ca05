"""Spatial-attention-only feature distillation (AKT paper Table 4 ablation, docs/methods/spatial.md#the-loss).

L = L_logit + λ·Σ_maps Σ_b KL( softmax(Sp(F_T)/τ) ‖ softmax(Sp(F_Q)/τ) ), same λ = 1000 and
τ = 8 as RFD (the paper does not say λ was retuned). Options and paper/code modes: see
:mod:`zsqbench_plugins.losses._feature`.
"""

from __future__ import annotations

from zsqbench.api import hookimpl
from zsqbench_plugins.losses._feature import AttentionDistillationLoss, akt_paper_schedule
from zsqbench_plugins.losses.cards import SPATIAL_CARD


class SpatialLoss(AttentionDistillationLoss):
    name = "spatial"
    description = "logit loss + λ·KL of spatial attentions of the tapped feature maps (AKT ablation)"
    branches = ("spatial",)
    card = SPATIAL_CARD
    budget_overrides = (akt_paper_schedule("spatial"),)


@hookimpl
def register_losses(register) -> None:
    register(SpatialLoss)
