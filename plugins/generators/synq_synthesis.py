"""SynQ's optional synthesis (``synthesis = lbns``, docs/methods/synq.md#the-synthetic-set): HAST's
hard samples plus TexQ's calibration centres and a layered BN-statistics term, on the shared engine.

1. **Centres** (:class:`CentreSet`): one image per class, classes in order, in batches of the synthesis
   batch (the last padded with class 0). Adam lr 0.5 on the pixels, plateau floor 0.05, patience 50,
   ``centre_iters`` (1,500) steps; loss 5·CE + (1/L)·Σ_l w_l·[mean_c(μ_l − μ̂_l)² + mean_c(σ²_l − σ̂²_l)²]
   against the running statistics, with w_l = 0.2 for the BNs that fire before index ⌊(L + 2)/2⌋ − 2 and
   1.1 from there on ("firing" order: the order of the BN calls in a forward, not module order).
2. **Centre statistics** (:func:`centre_statistics`): every BN input's per-batch mean and biased variance
   over the centre batches, pooled. The code weights every batch's variance by its size except the
   first (``lbns_variance = code``: with one batch, as on CIFAR, the target variance is v/B);
   ``pooled`` weights them all.
3. **The set** (:class:`LayeredSet`): HAST's synthesis with loss 0.4·BN + β·focal + 0.02·L_LBNS, where
   L_LBNS = Σ_{l ≥ split} [mean_c(μ_l − μ^C_l)² + mean_c(σ²_l − v^C_l)²] / (L·B) over the later BNs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api import TrainContext
from zsqbench.toolkit.augment import crop_flip
from zsqbench.toolkit.bn_stats import BNStatsLoss, batch_moments
from zsqbench.toolkit.synthesis import PixelSchedule, PixelSet, diagnostics_tensor, optimize_pixels
from zsqbench_plugins.generators.hast_synthesis import PLATEAU, focal_clamp, hardness_loss, schedule

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench_plugins.generators.synq import SynQOptions

#: The constants of SynQ's layered synthesis (its code; Table 10 searches weights it never maps to terms).
CENTRE_CE, EARLY_WEIGHT, LATE_WEIGHT = 5.0, 0.2, 1.1
CENTRE_PLATEAU = {"patience": 50, "min_lr": 0.05}
BN_WEIGHT, LBNS_WEIGHT = 0.4, 0.02


def later_start(layers: int) -> int:
    """The firing index from which a BN belongs to the later group: ⌊(L + 2)/2⌋ − 2."""
    return (layers + 2) // 2 - 2


class BNInputs:
    """Per-channel (mean, biased variance) of every BN input of the latest forward, in firing order, with
    the BN that fired (its running statistics are the targets). Hooks exist only inside :meth:`recording`."""

    def __init__(self, teacher: nn.Module) -> None:
        self.bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        self._records: list[tuple[Tensor, Tensor, nn.BatchNorm2d]] = []

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        var, mean = batch_moments(inputs[0])
        self._records.append((mean, var, module))

    @contextmanager
    def recording(self) -> Iterator["BNInputs"]:
        self._records = []
        handles = [bn.register_forward_hook(self._hook) for bn in self.bns]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._records = []

    def take(self) -> list[tuple[Tensor, Tensor, nn.BatchNorm2d]]:
        records, self._records = self._records, []
        if not records:
            raise RuntimeError("no BN fired in the recorded forward")
        return records


def layered_bn_loss(records: list[tuple[Tensor, Tensor, nn.BatchNorm2d]]) -> Tensor:
    """(1/L)·Σ_l w_l·[mean_c(μ_l − μ̂_l)² + mean_c(σ²_l − σ̂²_l)²], the centres' BN term."""
    split = later_start(len(records))
    terms = [(EARLY_WEIGHT if l < split else LATE_WEIGHT)
             * ((mean - bn.running_mean).pow(2).mean() + (var - bn.running_var).pow(2).mean())
             for l, (mean, var, bn) in enumerate(records)]
    return torch.stack(terms).sum() / len(records)


def centre_statistics(teacher: nn.Module, batches: list[Tensor], variance: str) -> list[tuple[Tensor, Tensor]]:
    """(μ^C_l, v^C_l) per BN firing, pooled over the centre batches (each forward without grad)."""
    recorder = BNInputs(teacher)
    per_batch = []
    with torch.no_grad(), recorder.recording():
        for x in batches:
            teacher(x)
            per_batch.append([(m, v) for m, v, _ in recorder.take()])
    sizes = [float(x.shape[0]) for x in batches]
    total = sum(sizes)
    pooled = []
    for l in range(len(per_batch[0])):
        means = [b[l][0] for b in per_batch]
        variances = [b[l][1] for b in per_batch]
        mean = sum(n * m for n, m in zip(sizes, means)) / total
        weights = [1.0 if (j == 0 and variance == "code") else n for j, n in enumerate(sizes)]
        within = sum(w * v for w, v in zip(weights, variances)) / total
        between = sum(n * m.pow(2) for n, m in zip(sizes, means)) / total - mean.pow(2)
        pooled.append((mean, within + between))
    return pooled


def lbns_loss(records: list[tuple[Tensor, Tensor, nn.BatchNorm2d]], targets: list[tuple[Tensor, Tensor]],
              batch: int) -> Tensor:
    """Σ_{l ≥ split} [mean_c(μ_l − μ^C_l)² + mean_c(σ²_l − v^C_l)²] / (L·B)."""
    if len(records) != len(targets):
        raise RuntimeError(f"{len(records)} BNs fired, the centre statistics have {len(targets)}")
    split = later_start(len(records))
    terms = [(mean - tm).pow(2).mean() + (var - tv).pow(2).mean()
             for (mean, var, _), (tm, tv) in list(zip(records, targets))[split:]]
    return torch.stack(terms).sum() / (len(records) * batch)


class CentreSet(PixelSet):
    """One image per class (TexQ's calibration centres), padded to whole synthesis batches with class 0."""

    label = "SynQ centres"
    folder = "synq-centres"
    terms = ["ce", "bn", "total"]

    def __init__(self, ctx: TrainContext, options: "SynQOptions") -> None:
        batch = options.synthesis_batch
        count = math.ceil(ctx.num_classes / batch) * batch
        super().__init__(ctx, count, batch, options.centre_iters, seed=options.seed_for(ctx.spec.seed))
        self.schedule = PixelSchedule(iters=options.centre_iters, lr=options.synthesis_lr, **CENTRE_PLATEAU)
        self.bns = BNStatsLoss(ctx.teacher)
        self.inputs = BNInputs(ctx.teacher)

    def method_settings(self) -> dict[str, Any]:
        return {"loss": "5ce+layered_bn", "lr": self.schedule.lr, "plateau": self.schedule.plateau(),
                "weights": [CENTRE_CE, EARLY_WEIGHT, LATE_WEIGHT]}

    def labels_of(self, index: int, size: int) -> Tensor:
        labels = torch.arange(index * self.batch, index * self.batch + size)
        return torch.where(labels < self.ctx.num_classes, labels, torch.zeros_like(labels))

    def make_batch(self, index: int, size: int, rng: torch.Generator, on_step: Callable[[int], None]
                   ) -> dict[str, Tensor]:
        ctx = self.ctx
        y = self.labels_of(index, size)
        x0 = torch.randn((size, *self.image_shape), generator=rng)
        y_dev = y.to(ctx.device)
        terms = {"ce": lambda view: CENTRE_CE * F.cross_entropy(view.logits, y_dev),
                 "bn": lambda view: layered_bn_loss(self.inputs.take())}
        with self.inputs.recording():
            done = optimize_pixels(ctx.teacher, x0.to(ctx.device), terms, self.schedule, self.bns, labels=y_dev,
                                   on_step=on_step)
        return {"x": done.x.cpu(), "y": y, "diagnostics": diagnostics_tensor(done, self.terms)}


class LayeredSet(PixelSet):
    """HAST's hard samples with the layered term towards the centres' statistics."""

    label = "SynQ"
    folder = "synq"
    terms = ["hardness", "bn", "lbns", "total"]

    def __init__(self, ctx: TrainContext, options: "SynQOptions") -> None:
        super().__init__(ctx, options.num_images, options.synthesis_batch, options.synthesis_iters,
                         seed=options.seed_for(ctx.spec.seed))
        self.options = options
        self.centres = CentreSet(ctx, options)
        self.bns = BNStatsLoss(ctx.teacher)
        self.inputs = BNInputs(ctx.teacher)
        self.targets: list[tuple[Tensor, Tensor]] = []

    def method_settings(self) -> dict[str, Any]:
        o = self.options
        return {"loss": "0.4bn+focal+0.02lbns", "lr": o.synthesis_lr, "plateau": PLATEAU,
                "hardness": [o.hardness_beta, o.hardness_gamma], "focal_clamp": focal_clamp(o),
                "augment": [o.synthesis_augment_p, o.synthesis_crop_min], "weights": [BN_WEIGHT, LBNS_WEIGHT],
                "variance": o.lbns_variance, "centres": self.centres.settings()}

    def start(self) -> None:
        x, _ = self.centres.load_or_build()
        batches = [b.to(self.ctx.device) for b in x.split(self.centres.batch)]
        self.targets = centre_statistics(self.ctx.teacher, batches, self.options.lbns_variance)

    def make_batch(self, index: int, size: int, rng: torch.Generator, on_step: Callable[[int], None]
                   ) -> dict[str, Tensor]:
        ctx, o = self.ctx, self.options
        y = torch.randint(0, ctx.num_classes, (size,), generator=rng)
        x0 = torch.randn((size, *self.image_shape), generator=rng)
        augment_seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        y_dev, clamp = y.to(ctx.device), focal_clamp(o)
        terms = {
            "hardness": lambda view: hardness_loss(view.logits, y_dev, o.hardness_beta, o.hardness_gamma, clamp),
            "bn": lambda view: BN_WEIGHT * view.bn_loss,
            "lbns": lambda view: LBNS_WEIGHT * lbns_loss(self.inputs.take(), self.targets, size),
        }

        def augment(x: Tensor) -> Tensor:
            return crop_flip(x, size=x.shape[-1], scale=(o.synthesis_crop_min, 1.0))

        with self.inputs.recording():
            done = optimize_pixels(ctx.teacher, x0.to(ctx.device), terms, schedule(o), self.bns, labels=y_dev,
                                   augment=augment if o.synthesis_augment_p > 0 else None,
                                   augment_seed=augment_seed if o.synthesis_augment_p > 0 else None, on_step=on_step)
        return {"x": done.x.cpu(), "y": y, "diagnostics": diagnostics_tensor(done, self.terms)}


__all__ = ["BNInputs", "CentreSet", "LayeredSet", "centre_statistics", "later_start", "layered_bn_loss", "lbns_loss"]
