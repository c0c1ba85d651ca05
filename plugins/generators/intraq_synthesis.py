"""IntraQ stage 1: synthesis with its three terms (docs/methods/intraq.md#synthesis-terms) and its
class-centre bookkeeping (docs/methods/intraq.md#class-centres), on the shared pixel-synthesis engine.

Per batch: labels U{0..C−1}; soft targets τ (1 for a random half, else U(ε_SIL, 1)); pixels from
N(0, 1); then the engine with local object reinforcement (one coin per iteration with p = 0.5:
every image gets its own RandomResizedCrop(scale (0.5, 1)) + flip, differentiably) and the loss
``batch_mse`` BN + SIL + MDC on the augmented images. MDC pulls each image's penultimate feature
into a band of cosine distance around its class centre, the mean feature of every image of that
class finished in *earlier* batches (fixed during a batch; the first batch has none). The centres
live in memory (:class:`ClassCentres`) and are rebuilt from the cache's finished batches when an
interrupted synthesis resumes, so run order never changes them (IQ2 avoided).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from zsqbench.api import FeatureTaps, TrainContext
from zsqbench.toolkit.augment import crop_flip
from zsqbench.toolkit.bn_stats import BNStatsLoss
from zsqbench.toolkit.synthesis import PixelSchedule, PixelSet, bn_term, diagnostics_tensor, optimize_pixels

#: The cosine-similarity eps of the reference's MDC, and the denominator's guard.
COSINE_EPS, COUNT_EPS = 1e-6, 1e-6


def soft_targets(size: int, eps_sil: float, rng: torch.Generator, hard_p: float = 0.5) -> Tensor:
    """τ_b: 1 with probability ``hard_p``, else drawn from U(ε_SIL, 1) (SIL's soft prior label)."""
    hard = torch.rand(size, generator=rng) < hard_p
    soft = eps_sil + (1 - eps_sil) * torch.rand(size, generator=rng)
    return torch.where(hard, torch.ones(size), soft)


def sil_loss(logits: Tensor, labels: Tensor, tau: Tensor) -> Tensor:
    """Soft inception loss: (1/B) Σ_b (softmax(logits_b)_{y_b} − τ_b)²; only the target entry counts."""
    p_y = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return (p_y - tau).pow(2).mean()


def cosine_distance(features: Tensor, centres: Tensor) -> Tensor:
    """d_b = 1 − cos(f_b, c_b) of flattened features and their class centres, shape (B,)."""
    return 1 - F.cosine_similarity(features.flatten(1), centres, dim=1, eps=COSINE_EPS)


def mdc_loss(features: Tensor, centres: Tensor, present: Tensor, lower: float, upper: float) -> Tensor:
    """Marginal distance constraint: Σ_b present_b·[h(λ_l − d_b) + h(d_b − λ_u)] / (Σ_b present_b + 1e-6).

    Zero inside the band [λ_l, λ_u] and for images whose class has no centre yet (``present`` 0)."""
    d = cosine_distance(features, centres)
    hinge = torch.relu(lower - d) + torch.relu(d - upper)
    return (present * hinge).sum() / (present.sum() + COUNT_EPS)


class ClassCentres:
    """Per class, the sum and count of the penultimate features of every finished image; a centre
    is their arithmetic mean. Sums are kept in float64, so the centre does not depend (beyond
    float64 rounding) on the order the images were added in."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums: Tensor | None = None
        self.counts = torch.zeros(num_classes, dtype=torch.long)

    def add(self, features: Tensor, labels: Tensor) -> None:
        f = features.detach().flatten(1).to("cpu", torch.float64)
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, f.shape[1], dtype=torch.float64)
        self.sums.index_add_(0, labels.cpu(), f)
        self.counts += torch.bincount(labels.cpu(), minlength=self.num_classes)

    def centres(self) -> Tensor:
        """(C, D) float64 means; rows of classes without images are 0."""
        assert self.sums is not None
        return self.sums / self.counts.clamp(min=1)[:, None]

    def lookup(self, labels: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        """(centre of each label (B, dim) float32, present (B,) float32: 1 where the class has one)."""
        if self.sums is None:
            return torch.zeros(len(labels), dim), torch.zeros(len(labels))
        present = (self.counts[labels.cpu()] > 0).float()
        return self.centres()[labels.cpu()].float(), present


class IntraQSet(PixelSet):
    """IntraQ's synthetic set (docs/methods/intraq.md#synthesis): 20 batches of 256 at the paper's sizes."""

    label = "IntraQ"
    folder = "intraq"
    terms = ["bn", "sil", "mdc", "total"]

    def __init__(self, ctx: TrainContext, options: Any, eps_sil: float, lower: float, upper: float,
                 tap: str) -> None:
        seed = options.seed_for(ctx.spec.seed)
        super().__init__(ctx, options.num_images, options.synthesis_batch, options.synthesis_iters, seed)
        self.options = options
        self.eps_sil, self.lower, self.upper, self.tap = eps_sil, lower, upper, tap
        self.schedule = PixelSchedule(iters=options.synthesis_iters, lr=options.synthesis_lr,
                                      patience=options.plateau_patience, augment_p=options.lor_p)
        self.bns = BNStatsLoss(ctx.teacher)
        self.taps = FeatureTaps(ctx.teacher, (tap,))
        self.store = ClassCentres(ctx.num_classes)
        self.checks: list[Tensor] = []

    def method_settings(self) -> dict[str, Any]:
        o = self.options
        return {"loss": "batch_mse+sil+mdc", "lr": self.schedule.lr, "plateau": self.schedule.plateau(),
                "lor": [o.lor_p, o.lor_min_area], "eps_sil": self.eps_sil, "hard_p": o.hard_target_p,
                "margins": [self.lower, self.upper], "tap": self.tap}

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher logits and penultimate features of ``x`` (no grad, eval mode, not augmented)."""
        with torch.no_grad(), self.taps.active():
            logits = self.ctx.teacher(x)
            return logits, self.taps.take(detach=True)[self.tap].flatten(1)

    def start(self) -> None:
        self.store = ClassCentres(self.ctx.num_classes)
        self.checks = []

    def on_part(self, index: int, part: dict[str, Tensor]) -> None:
        _, features = self._features(part["x"].to(self.ctx.device))
        self.store.add(features, part["y"])

    def make_batch(self, index: int, size: int, rng: torch.Generator, on_step: Callable[[int], None]
                   ) -> dict[str, Tensor]:
        ctx, o = self.ctx, self.options
        y = torch.randint(0, ctx.num_classes, (size,), generator=rng)
        tau = soft_targets(size, self.eps_sil, rng, o.hard_target_p)
        x0 = torch.randn((size, *self.image_shape), generator=rng)
        augment_seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        dim = self._features(x0[:1].to(ctx.device))[1].shape[1]
        centres, present = (t.to(ctx.device) for t in self.store.lookup(y, dim))
        y_dev, tau_dev = y.to(ctx.device), tau.to(ctx.device)

        terms = {
            "bn": bn_term,
            "sil": lambda view: sil_loss(view.logits, y_dev, tau_dev),
            "mdc": lambda view: mdc_loss(view.features[self.tap], centres, present, self.lower, self.upper),
        }

        def lor(x: Tensor) -> Tensor:
            return crop_flip(x, size=self.image_shape[-1], scale=(o.lor_min_area, 1.0))

        done = optimize_pixels(ctx.teacher, x0.to(ctx.device), terms, self.schedule, self.bns, labels=y_dev,
                               taps=self.taps, augment=lor, augment_seed=augment_seed, on_step=on_step)
        return {"x": done.x.cpu(), "y": y, "diagnostics": diagnostics_tensor(done, self.terms),
                "checks": self._checks(done.x, y_dev, tau_dev, centres, present)}

    def _checks(self, x: Tensor, y: Tensor, tau: Tensor, centres: Tensor, present: Tensor) -> Tensor:
        """The synthesis diagnostics (docs/methods/intraq.md#synthesis-diagnostics) on the final
        images: teacher accuracy on the τ = 1 images, mean |p_y − τ| on the soft ones, the fraction
        of active MDC hinges (NaN where undefined)."""
        logits, features = self._features(x)
        p_y = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        hard = tau == 1
        nan = torch.tensor(float("nan"), device=x.device)
        accuracy = (logits.argmax(1) == y)[hard].float().mean() if hard.any() else nan
        gap = (p_y - tau).abs()[~hard].mean() if (~hard).any() else nan
        d = cosine_distance(features, centres)
        active = ((d < self.lower) | (d > self.upper)).float()
        with_centre = present > 0
        fraction = active[with_centre].mean() if with_centre.any() else nan
        return torch.stack([accuracy, gap, fraction]).to("cpu", torch.float64)
