"""Spatial-attention-only feature distillation (AKT paper Table 4 ablation, METHODS §8).

L = L_logit + λ·Σ_maps Σ_b KL( softmax(Sp(F_T)/τ) ‖ softmax(Sp(F_Q)/τ) ), same λ = 1000 and
τ = 8 as RFD (the paper does not say λ was retuned). Options and paper/code modes: see
:mod:`zsqbench_plugins.losses._feature`.
"""

from __future__ import annotations

from zsqbench_plugins.losses._feature import AttentionDistillationLoss, plugin_hooks
from zsqbench_plugins.losses.cards import SPATIAL_CARD


class SpatialLoss(AttentionDistillationLoss):
    name = "spatial"
    description = "logit loss + λ·KL of spatial attentions of the tapped feature maps (AKT ablation)"
    branches = ("spatial",)
    card = SPATIAL_CARD


register_losses, register_budget_overrides = plugin_hooks(SpatialLoss)
