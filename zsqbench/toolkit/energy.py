"""Per-channel and per-position energies of feature maps (mean of F²) in one autograd node.

Attention distillation (spatial and channel attention, AKT's RFD) and HAST's feature alignment all
start from the squared map averaged over channels or over positions; at small batches the autograd
graph of ``F.pow(2).mean(...)`` costs more than the arithmetic. Shared here so every method uses
the same node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _energies(feature: Tensor, spatial: bool, channel: bool) -> tuple[Tensor, Tensor]:
    energy = feature * feature
    empty = feature.new_empty(0)
    return (energy.mean(dim=1) if spatial else empty, energy.mean(dim=(2, 3)) if channel else empty)


class _SquareMeans(torch.autograd.Function):
    """Both attentions' inputs from one squaring: mean_c F² (B, H, W) and mean_hw F² (B, C).

    Autograd of ``F.pow(2).mean(…)`` per branch costs, per map and branch, a copy, two
    multiplications and a division over the whole map in backward; this node's backward is
    one broadcast sum and one multiplication, 2F·(g_sp/C + g_ch/HW), for both branches at
    once (the same gradient up to float rounding; tests/plugins/test_feature_losses.py). The
    backward is written in differentiable ops, so double backward (Hessian-vector products
    of the student's loss, ``zsqbench analyze hessian``) works as before.
    """

    @staticmethod
    def forward(ctx: Any, feature: Tensor, spatial: bool, channel: bool) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(feature)
        return _energies(feature, spatial, channel)

    @staticmethod
    def backward(ctx: Any, g_spatial: Tensor | None, g_channel: Tensor | None) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        (feature,) = ctx.saved_tensors
        _, c, h, w = feature.shape
        coef: Tensor | None = None
        if g_spatial is not None and g_spatial.numel():
            coef = (g_spatial * (2.0 / c)).unsqueeze(1)
        if g_channel is not None and g_channel.numel():
            per_channel = (g_channel * (2.0 / (h * w)))[:, :, None, None]
            if coef is None:
                coef = per_channel
            elif feature.is_contiguous(memory_format=torch.channels_last) and not feature.is_contiguous():
                # the same sums, laid out as the map (channels last): the product below then runs
                # over two tensors of one layout (1.5x faster at batch 200 than against an NCHW coef)
                coef = (coef.squeeze(1).unsqueeze(3) + per_channel.squeeze(3).squeeze(2)[:, None, None, :]
                        ).permute(0, 3, 1, 2)
            else:
                coef = coef + per_channel
        if coef is None:
            return None, None, None
        return feature * coef, None, None


def square_means(feature: Tensor, spatial: bool = True, channel: bool = True) -> tuple[Tensor, Tensor]:
    """(mean over channels of F², shape (B, H, W); mean over positions of F², shape (B, C)).

    A branch not asked for comes back as an empty tensor and costs nothing. A map without a graph
    (the teacher's, detached) skips the autograd node: the same operations, without its Python cost.
    """
    if not (feature.requires_grad and torch.is_grad_enabled()):
        return _energies(feature, spatial, channel)
    return _SquareMeans.apply(feature, spatial, channel)
