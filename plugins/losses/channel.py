"""Channel-attention-only feature distillation (AKT paper Table 4 ablation, docs/methods/channel.md#the-loss).

L = L_logit + λ·Σ_maps Σ_b KL( softmax(Ch(F_T)/τ) ‖ softmax(Ch(F_Q)/τ) ); Ch already ends in
a softmax, so the channel attention is softmaxed twice, as in paper and code. Options and
paper/code modes: see :mod:`zsqbench_plugins.losses._feature`.
"""

from __future__ import annotations

from zsqbench.api import hookimpl
from zsqbench_plugins.losses._feature import AttentionDistillationLoss, akt_paper_schedule
from zsqbench_plugins.losses.cards import CHANNEL_CARD


class ChannelLoss(AttentionDistillationLoss):
    name = "channel"
    description = "logit loss + λ·KL of channel attentions of the tapped feature maps (AKT ablation)"
    branches = ("channel",)
    card = CHANNEL_CARD
    budget_overrides = (akt_paper_schedule("channel"),)


@hookimpl
def register_losses(register) -> None:
    register(ChannelLoss)
