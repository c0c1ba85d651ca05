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
from torch.nn import functional as F

from zsqbench.toolkit.reference import use_reference


def _two_pass_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """(biased variance (C,), mean (1, C, 1, 1)) of an (N, C, H, W) tensor: the mean, then the mean of the
    centered squares.

    The centered squares come from ``mse_loss(reduction="none")``, one kernel computing ``d = x − mean``
    then ``d·d``, the same two roundings as ``(x − mean).square_()`` in one pass over the tensor instead of
    two (bit for bit, tests/trial/test_fused_ops.py; about 10 % of the moments' time at batch 200)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    return F.mse_loss(x, mean.expand_as(x), reduction="none").mean(dim=(0, 2, 3)), mean


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
        var, mean = _two_pass_moments(x)
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


def _targets(bns: list[nn.BatchNorm2d], inputs: tuple[Tensor, ...]
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused form's constants: running means and variances of ``bns`` concatenated, each channel's
    weight 1/C_l (the per-layer mean over channels as one weighted sum), and, per channel, the
    element count M_l of its moments and 2/M_l in the inputs' compute dtype (the backward's
    factors, rounded as :class:`_BatchMoments` rounds them)."""
    def per_channel(value: float, bn: nn.BatchNorm2d, dtype: torch.dtype | None) -> Tensor:
        return torch.full((bn.num_features,), value, dtype=dtype, device=bn.running_mean.device)

    counts = [x.numel() // x.shape[1] for x in inputs]
    dtypes = [x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32 for x in inputs]
    return (torch.cat([bn.running_mean for bn in bns]), torch.cat([bn.running_var for bn in bns]),
            torch.cat([per_channel(1.0 / bn.num_features, bn, None) for bn in bns]),
            torch.cat([per_channel(float(m), bn, d) for bn, m, d in zip(bns, counts, dtypes)]),
            torch.cat([per_channel(2.0 / m, bn, d) for bn, m, d in zip(bns, counts, dtypes)]))


class _FusedBNGaps(torch.autograd.Function):
    """The fused batch_mse total (:meth:`BNStatsLoss._fused_total`) of N recorded BN inputs, in one node.

    Forward: each input's moments by :class:`_BatchMoments`' operations, then the weighted squared
    gaps, as before. Backward: the formulas of autograd (for the squared gaps) and of
    :class:`_BatchMoments` (for the moments) on the same values in the same order, but for all channels
    of all layers together (the per-channel factors come concatenated from :func:`_targets`), then
    x·a + b per layer: bit for bit the gradient of 21 :class:`_BatchMoments` nodes and the autograd
    graph of the total (tests/trial/test_fused_ops.py), with one Python node instead of 22 and about
    110 fewer small operations per generator step of ResNet-20. (``torch.batch_norm_update_stats``
    would take both moments in two reads, 2-4x faster at batch 200, but on channels-last float32 it
    accumulates in float: 1.8e-5 relative error in the variance at batch 200 against 1.3e-7 for the
    two-pass form; benchmarks/README.md.)
    """

    @staticmethod
    def forward(ctx: Any, running_mean: Tensor, running_var: Tensor, weight: Tensor, counts: Tensor,  # type: ignore[override]
                two_over_counts: Tensor, *inputs: Tensor) -> Tensor:
        moments = [_two_pass_moments(x) for x in inputs]
        means = torch.cat([m.flatten() for _, m in moments])
        gaps = torch.stack([means - running_mean, torch.cat([v for v, _ in moments]) - running_var])
        ctx.save_for_backward(gaps, means, weight, counts, two_over_counts, *inputs)
        return (gaps.square() * weight).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        gaps, means, weight, counts, two_over_counts, *inputs = ctx.saved_tensors
        # autograd of (gaps.square() * weight).sum(), the same rounding; the expanded gradient keeps the
        # gaps' dtype against a float32 weight, as autograd's does (a 0-dim one would not)
        g_gaps = (grad.expand(gaps.shape) * weight) * (2.0 * gaps)
        g_mean, g_var = g_gaps.unbind(0)
        a = g_var * two_over_counts
        b = g_mean / counts - a * means
        grads: list[Tensor] = []
        start = 0
        for x in inputs:
            c = x.shape[1]
            grads.append(torch.addcmul(b[start:start + c].view(1, c, 1, 1), x, a[start:start + c].view(1, c, 1, 1)))
            start += c
        return (None, None, None, None, None, *grads)


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
        #: the fused form's recorded BN inputs (input, its version then, layer), consumed by :meth:`_fused_total`
        self._moments: list[tuple[Tensor, int, int]] = []
        self._targets: tuple[Tensor, ...] | None = None  # of the fused form, see _fused_total
        self._targets_key: tuple | None = None

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if self.fused:  # kept for :meth:`_fused_total`, which takes every layer's moments in one node
            x = inputs[0]
            self._moments.append((x, x._version, self._index[id(module)]))
            return
        self._terms.append(self.layer_term(inputs[0], module.running_mean, module.running_var,
                                           self._index[id(module)]))

    def _fused_total(self) -> Tensor:
        """Σ_l [mean_c (μ_l − μ̂_l)² + mean_c (σ²_l − σ̂²_l)²] over the recorded layers in one autograd node
        (:class:`_FusedBNGaps`): the per-layer means over channels as one weighted sum, 1/C_l per channel, over the channels of all layers concatenated, and a
        backward that forms every layer's per-channel coefficients at once, then one fused multiply-add per
        layer. The same value up to summation order (tests/trial/test_fused_ops.py bounds it in float64
        against the per-layer form).
        """
        inputs, versions, layers = zip(*self._moments)
        self._moments = []
        if any(x._version != v for x, v in zip(inputs, versions)):
            raise RuntimeError("a BN input was modified in place after the teacher's BN read it; the "
                               "BN-statistics loss needs the values the BN saw")
        bns = [self.bns[i] for i in layers]
        if torch.compiler.is_compiling():  # traced into the graph: no Python-side cache
            targets = _targets(bns, inputs)
        else:  # rebuilt only when the layers, their statistics tensors (a move to another device) or the shapes change
            key = tuple((bn.running_mean.data_ptr(), bn.running_mean._version, bn.running_var.data_ptr(),
                         bn.running_var._version, x.numel() // x.shape[1], x.dtype) for bn, x in zip(bns, inputs))
            if self._targets_key != key:
                self._targets, self._targets_key = _targets(bns, inputs), key
            targets = self._targets
        return _FusedBNGaps.apply(*targets, *inputs)

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
