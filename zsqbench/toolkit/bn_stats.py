"""The teacher BN-statistics loss (METHODS §4.2): generated batches should have the statistics the
teacher's BN layers saw in training. Shared by GDFQ, AdaDFQ, HAST and most ZSQ generators."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn


class _BatchMoments(torch.autograd.Function):
    """Per-channel batch mean and biased variance of an (N, C, H, W) tensor, in one node.

    ``torch.var_mean`` over (0, 2, 3) runs a Welford reduction that measured ~4x slower on
    CPU than the two-pass form used here (mean, then the mean of the centered squares, the
    same textbook estimator), and its backward takes several passes over the tensor; this
    backward is one fused multiply-add, x·a + b with per-channel a = 2·g_var/M and
    b = (g_mean − a·M·mean)/M. The teacher's 21 BN inputs go through it on every generator
    step (tests/test_gdfq.py checks values and gradients against ``torch.var_mean``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).square_().mean(dim=(0, 2, 3))
        ctx.save_for_backward(x, mean)
        return var, mean.flatten()

    @staticmethod
    def backward(ctx: Any, g_var: Tensor, g_mean: Tensor) -> Tensor:  # type: ignore[override]
        x, mean = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        a = (g_var * (2.0 / count)).view(1, -1, 1, 1)
        b = (g_mean / count).view(1, -1, 1, 1) - a * mean
        return torch.addcmul(b, x, a)


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """(biased variance, mean) of each channel over batch and positions, like
    ``torch.var_mean(x, dim=(0, 2, 3), unbiased=False)``, computed faster (see above)."""
    return _BatchMoments.apply(x)


class BNStatsLoss:
    """Matches the batch statistics of every teacher BN input to that BN's running stats.

    L = (1/L) Σ_l [mean_c (μ_l − μ̂_l)² + mean_c (σ²_l − σ̂²_l)²], biased batch variance.
    Hooks are attached only while :meth:`recording` is active, so no other forward pays.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        self._terms: list[Tensor] = []

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        var, mean = batch_moments(x)
        self._terms.append(
            (mean - module.running_mean).pow(2).mean() + (var - module.running_var).pow(2).mean()
        )

    @contextmanager
    def recording(self) -> Iterator[None]:
        self._terms = []
        handles = [bn.register_forward_hook(self._hook) for bn in self.bns]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def loss(self) -> Tensor:
        if not self._terms:
            raise RuntimeError("BN-statistics loss read before any recorded teacher forward")
        total = torch.stack(self._terms).sum() / len(self.bns)
        self._terms = []
        return total
