"""The teacher BN-statistics loss family (docs/methods/common.md#bn-statistics-loss-family): generated
images should have the statistics the teacher's BN layers saw in training. Shared by GDFQ, AdaDFQ,
HAST, IntraQ (``batch_mse``: batch moments, means over channels and layers) and ZeroQ (``zeroq``:
per-image moments with a std target, sums over channels and layers, plus an input term); one
configurable class, so the variants differ only in their :class:`BNLossConfig`."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
from torch import Tensor, nn

from zsqbench.toolkit.reference import use_reference


class _BatchMoments(torch.autograd.Function):
    """Per-channel batch mean and biased variance of an (N, C, H, W) tensor, in one node.

    ``torch.var_mean`` over (0, 2, 3) runs a Welford reduction that measured ~4x slower on
    CPU than the two-pass form used here (mean, then the mean of the centered squares, the
    same textbook estimator), and its backward takes several passes over the tensor; this
    backward is one fused multiply-add, x·a + b with per-channel a = 2·g_var/M and
    b = (g_mean − a·M·mean)/M. The teacher's 21 BN inputs go through it on every generator
    step (tests/plugins/test_gdfq.py checks values and gradients against ``torch.var_mean``).
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


@dataclass(frozen=True)
class BNLossConfig:
    """One member of the BN-statistics loss family (docs/methods/common.md#bn-statistics-loss-family).

    ``granularity``: "batch" matches each channel's mean and **biased** variance over (batch,
    positions); "sample" matches each image's per-channel mean and std, sqrt(unbiased variance
    over positions + ``eps``), against sqrt(running var + ``eps``), averaged over the images.
    ``reduce_channels`` / ``reduce_layers``: mean or sum. ``input_term``: add T_0, the per-sample
    form on the image itself against mean 0 and std exactly 1 (ZeroQ's input layer).
    ``mean_margin`` / ``second_margin``: slack δ_l, γ_l, one value or one per BN (module order);
    a gap g then costs h(|g| − δ)² instead of g² (DSG's slack; 0 is the plain squared gap).
    """

    granularity: Literal["batch", "sample"] = "batch"
    reduce_channels: Literal["mean", "sum"] = "mean"
    reduce_layers: Literal["mean", "sum"] = "mean"
    input_term: bool = False
    mean_margin: float | tuple[float, ...] = 0.0
    second_margin: float | tuple[float, ...] = 0.0
    eps: float = 1e-6


#: GDFQ / AdaDFQ / HAST / IntraQ.
BATCH_MSE = BNLossConfig()
#: ZeroQ's code: per image, std target, sums over channels and layers, input term.
ZEROQ = BNLossConfig(granularity="sample", reduce_channels="sum", reduce_layers="sum", input_term=True)
PRESETS: dict[str, BNLossConfig] = {"batch_mse": BATCH_MSE, "zeroq": ZEROQ}


def _margin(value: float | tuple[float, ...], layer: int) -> float:
    return value if isinstance(value, (int, float)) else value[layer]


def _squared_gap(gap: Tensor, margin: float) -> Tensor:
    """g² without slack (the reference's form, op for op), h(|g| − δ)² with it."""
    return gap.pow(2) if margin == 0 else torch.relu(gap.abs() - margin).pow(2)


def sample_moments(z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel (mean, sqrt(unbiased variance + eps)) over positions, each (B, C)."""
    var, mean = torch.var_mean(z.flatten(2), dim=2, correction=1)
    return mean, (var + eps).sqrt()


def input_term(x: Tensor, eps: float = 1e-6) -> Tensor:
    """T_0 = (1/B) Σ_b [‖m_{0,b}‖² + ‖s_{0,b} − 1‖²]: each image's channels towards mean 0, std exactly 1."""
    mean, std = sample_moments(x, eps)
    return (mean.pow(2).sum(dim=1) + (std - 1).pow(2).sum(dim=1)).mean()


def _targets(bns: list[nn.BatchNorm2d]) -> tuple[Tensor, Tensor, Tensor]:
    """The fused form's constants: running means and variances of ``bns`` concatenated, and each
    channel's weight 1/C_l (the per-layer mean over channels as one weighted sum)."""
    weight = [torch.full((bn.num_features,), 1.0 / bn.num_features, device=bn.running_mean.device) for bn in bns]
    return (torch.cat([bn.running_mean for bn in bns]), torch.cat([bn.running_var for bn in bns]),
            torch.cat(weight))


class BNStatsLoss:
    """Matches the statistics of every teacher BN input to that BN's running statistics.

    Default (``batch_mse``): L = (1/L) Σ_l [mean_c (μ_l − μ̂_l)² + mean_c (σ²_l − σ̂²_l)²], biased
    batch variance. Hooks are attached only while :meth:`recording` is active, so no other
    forward pays; they read BN *inputs*, addressed by BN module (never by conv order, ZeroQ's ZQ4).
    """

    def __init__(self, teacher: nn.Module, config: BNLossConfig = BATCH_MSE, fused: bool | None = None) -> None:
        self.config = config
        self.bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        self._index = {id(m): i for i, m in enumerate(self.bns)}
        self._terms: list[Tensor] = []
        # The plain batch_mse form has a fused version (:meth:`_fused_total`); other members of
        # the family keep their per-layer terms.
        plain = (config.granularity == "batch" and config.reduce_channels == "mean" and config.mean_margin == 0
                 and config.second_margin == 0)
        self.fused = plain and (not use_reference() if fused is None else fused)
        self._moments: list[tuple[Tensor, Tensor, int]] = []
        self._targets: tuple[Tensor, Tensor, Tensor] | None = None  # of the fused form, see _fused_total
        self._targets_key: tuple | None = None

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if self.fused:
            var, mean = batch_moments(inputs[0])
            self._moments.append((var, mean, self._index[id(module)]))
            return
        self._terms.append(self.layer_term(inputs[0], module.running_mean, module.running_var,
                                           self._index[id(module)]))

    def _fused_total(self) -> Tensor:
        """Σ_l [mean_c (μ_l − μ̂_l)² + mean_c (σ²_l − σ̂²_l)²] over the recorded layers in one reduction.

        The per-layer means become one weighted sum, 1/C_l per channel, over the channels of all
        layers concatenated: 8 operations instead of 8 per layer (21 layers in ResNet-20, 53 in
        ResNet-50); the same value up to summation order (tests/trial/test_fused_ops.py bounds it in
        float64 against the per-layer form).
        """
        vars_, means, layers = zip(*self._moments)
        self._moments = []
        bns = [self.bns[i] for i in layers]
        if torch.compiler.is_compiling():  # traced into the graph: no Python-side cache
            targets = _targets(bns)
        else:  # rebuilt only when the layers or their statistics tensors change (a move to another device)
            key = tuple((bn.running_mean.data_ptr(), bn.running_mean._version, bn.running_var.data_ptr(),
                         bn.running_var._version) for bn in bns)
            if self._targets_key != key:
                self._targets, self._targets_key = _targets(bns), key
            targets = self._targets
        running_mean, running_var, weight = targets
        gaps = torch.stack([torch.cat(means) - running_mean, torch.cat(vars_) - running_var])
        return (gaps.square() * weight).sum()

    def layer_term(self, z: Tensor, running_mean: Tensor, running_var: Tensor, layer: int = 0) -> Tensor:
        """T_l of one BN input ``z`` (B, C, H, W) against that BN's running statistics."""
        c = self.config
        reduce = torch.sum if c.reduce_channels == "sum" else torch.mean
        delta, gamma = _margin(c.mean_margin, layer), _margin(c.second_margin, layer)
        if c.granularity == "batch":
            var, mean = batch_moments(z)
            if c.reduce_channels == "mean" and delta == 0 and gamma == 0:  # GDFQ's form, op for op
                return (mean - running_mean).pow(2).mean() + (var - running_var).pow(2).mean()
            return reduce(_squared_gap(mean - running_mean, delta)) + reduce(_squared_gap(var - running_var, gamma))
        mean, std = sample_moments(z, c.eps)
        target_std = (running_var + c.eps).sqrt()
        per_sample = (reduce(_squared_gap(mean - running_mean, delta), dim=1)
                      + reduce(_squared_gap(std - target_std, gamma), dim=1))
        return per_sample.mean()

    @contextmanager
    def recording(self) -> Iterator[None]:
        self._terms = []
        self._moments = []
        handles = [bn.register_forward_hook(self._hook) for bn in self.bns]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def loss(self, x: Tensor | None = None) -> Tensor:
        """The recorded forward's loss (the terms are consumed). ``x``: the teacher's input, needed
        (and only used) when the configuration has the input term."""
        if not self._terms and not self._moments:
            raise RuntimeError("BN-statistics loss read before any recorded teacher forward")
        c = self.config
        total = self._fused_total() if self._moments else torch.stack(self._terms).sum()
        if c.reduce_layers == "mean":
            total = total / len(self.bns)
        self._terms = []
        if c.input_term:
            if x is None:
                raise RuntimeError("this BN-statistics loss has an input term: pass the teacher's input to loss()")
            total = total + input_term(x, c.eps)
        return total
