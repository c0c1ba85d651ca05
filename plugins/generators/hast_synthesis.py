"""HAST stage 1: hard-sample synthesis (docs/methods/hast.md#hard-sample-synthesis) on the shared
pixel-synthesis engine.

Pixels are optimized against the teacher (focal "hardness" CE + the ``batch_mse`` BN statistics;
:func:`zsqbench.toolkit.synthesis.optimize_pixels`). The set is cached
(:class:`zsqbench.toolkit.cache.TensorCache`), keyed by the teacher's weights and every synthesis
setting, verified before use and resumable batch by batch (:mod:`zsqbench.toolkit.synthesis`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api import TrainContext
from zsqbench.toolkit.augment import crop_flip
from zsqbench.toolkit.bn_stats import BNStatsLoss
from zsqbench.toolkit.cache import TensorCache, state_fingerprint
from zsqbench.toolkit.synthesis import (
    PixelSchedule,
    SynthesisView,
    assemble,
    batch_seed,
    batch_sizes,
    bn_term,
    check_set,
    diagnostics_tensor,
    load_or_build,
    optimize_pixels,
    synthesize_parts,
)

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench_plugins.generators.hast import HASTOptions

# Synthesis-optimizer constants of the reference (docs/methods/hast.md#hard-sample-synthesis); part of the cache key.
PLATEAU = {"mode": "min", "factor": 0.1, "patience": 50, "min_lr": 1e-4}
CACHE_FORMAT = 2  # 2: zsqbench.toolkit.cache layout
#: The loss terms, in the order they are added (and recorded as diagnostics).
TERMS = ["hardness", "bn", "total"]


def hardness_loss(logits: Tensor, labels: Tensor, beta: float, gamma: float, clamp: float = 0.0) -> Tensor:
    """β·mean_b[(1 − p_b)^γ · CE_b] with p_b = softmax(logits_b)_{y_b}
    (docs/methods/hast.md#hard-sample-synthesis).

    Focal weighting: samples the teacher already finds easy count less, so the pixels move
    towards hard (low-confidence) images. The gradient also flows through the weight.
    ``clamp`` > 0 (SynQ's ``focal_clamp``, docs/methods/synq.md#the-synthetic-set): the weight is
    max(1 − p, clamp)^γ. For γ < 1 the derivative of (1 − p)^γ is infinite at p = 1, which a
    saturated teacher reaches in float32; the clamp gives the right limit there and changes neither
    value nor gradient wherever the unclamped form is finite.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    weight = 1 - log_p.exp()
    if clamp > 0:
        weight = weight.clamp_min(clamp)
    return beta * (weight.pow(gamma) * -log_p).mean()


def focal_clamp(opts: HASTOptions) -> float:
    """The clamp a set's synthesis uses: SynQ's option where it can act (γ < 1), else none (HAST has
    no such option, so its sets and their cache keys stay as they were)."""
    clamp = float(getattr(opts, "focal_clamp", 0.0))
    return clamp if opts.hardness_gamma < 1 else 0.0


def schedule(opts: HASTOptions) -> PixelSchedule:
    return PixelSchedule(iters=opts.synthesis_iters, lr=opts.synthesis_lr, patience=PLATEAU["patience"],
                         min_lr=PLATEAU["min_lr"], factor=PLATEAU["factor"], augment_p=opts.synthesis_augment_p)


def synthesize_batch(
    teacher: nn.Module,
    bns: BNStatsLoss,
    x0: Tensor,
    labels: Tensor,
    opts: HASTOptions,
    on_step: Callable[[int], None] = lambda it: None,
    diagnostics: list[Tensor] | None = None,
    augment_seed: int = 0,
) -> Tensor:
    """Optimize the pixels ``x0`` so the teacher finds them hard yet BN-plausible
    (docs/methods/hast.md#hard-sample-synthesis).

    Adam(lr 0.5) on the pixels alone, ReduceLROnPlateau stepped on the total loss every
    iteration, no clipping; no augmentation unless ``opts.synthesis_augment_p`` > 0 (the ImageNet
    code's, seeded by ``augment_seed``). Returns the final images, detached; appends the
    terms at the first and last iteration (``TERMS``) to ``diagnostics`` when given.
    """

    def hardness(view: SynthesisView) -> Tensor:
        return hardness_loss(view.logits, labels, opts.hardness_beta, opts.hardness_gamma, clamp)

    clamp = focal_clamp(opts)

    augment, seed = None, None
    if opts.synthesis_augment_p > 0:  # ImageNet: per-image RRC(size, scale (crop_min, 1)) + flip (IMAGENET.md §4.2)
        def augment(x: Tensor) -> Tensor:
            return crop_flip(x, size=x.shape[-1], scale=(opts.synthesis_crop_min, 1.0))
        seed = augment_seed
    done = optimize_pixels(teacher, x0, {"hardness": hardness, "bn": bn_term}, schedule(opts), bns,
                           labels=labels, augment=augment, augment_seed=seed, on_step=on_step)
    if diagnostics is not None:
        diagnostics.append(diagnostics_tensor(done, TERMS))
    return done.x


def set_check(count: int, shape: tuple[int, ...], num_classes: int) -> Callable[[dict[str, Tensor]], str]:
    return check_set(count, shape, num_classes)


class SyntheticSet:
    """The synthetic set of one HAST trial: its settings, its cache entry, and building it."""

    def __init__(self, ctx: TrainContext, options: "HASTOptions") -> None:
        self.ctx = ctx
        self.options = options
        self.image_shape = tuple(ctx.teacher_entry.input_size)
        self.diagnostics: Tensor | None = None

    def settings(self) -> dict[str, Any]:
        """Everything the synthetic set depends on; its sha256 names the cache entry."""
        o = self.options
        ctx = self.ctx
        return {
            "format": CACHE_FORMAT,
            "teacher_sha256": state_fingerprint(ctx.teacher),
            "dataset": ctx.spec.dataset,
            "num_classes": ctx.num_classes,
            "image_shape": list(self.image_shape),
            "num_images": o.num_images,
            "batch": o.synthesis_batch,
            "iters": o.synthesis_iters,
            "lr": o.synthesis_lr,
            "plateau": PLATEAU,
            "hardness": [o.hardness_beta, o.hardness_gamma],
            "seed": o.seed_for(ctx.spec.seed),
            # only when augmenting, so the CIFAR sets keep their cache keys
            **({"augment": [o.synthesis_augment_p, o.synthesis_crop_min]} if o.synthesis_augment_p > 0 else {}),
            # only where SynQ's clamp acts (γ < 1): a set without it is HAST's, shared by both
            **({"focal_clamp": focal_clamp(o)} if focal_clamp(o) > 0 else {}),
        }

    def cache(self) -> TensorCache:
        return TensorCache(self.ctx.cache_dir / "hast", self.settings())

    def load_or_build(self) -> tuple[Tensor, Tensor]:
        """The verified set from the cache, else (re)built, saved and verified.

        Synthesis uses its own seeded RNG per batch, never the global one, so a trial draws
        the same random numbers afterwards whether the set came from the cache or not.
        """
        o = self.options
        cache = self.cache()
        check = set_check(o.num_images, self.image_shape, self.ctx.num_classes)
        loaded = load_or_build(cache, check, lambda: self._synthesize(cache), self.ctx.report, "HAST", o.num_images)
        self.diagnostics = loaded.get("diagnostics")
        return loaded["x"], loaded["y"]

    def _synthesize(self, cache: TensorCache) -> dict[str, Tensor]:
        o = self.options
        ctx = self.ctx
        seed = cache.settings["seed"]
        bns = BNStatsLoss(ctx.teacher)

        def make(index: int, size: int, on_step: Callable[[int], None]) -> dict[str, Tensor]:
            rng = torch.Generator().manual_seed(batch_seed("hast-synthesis", seed, index))
            y = torch.randint(0, ctx.num_classes, (size,), generator=rng)
            x0 = torch.randn((size, *self.image_shape), generator=rng)
            augment_seed = int(torch.randint(0, 2**62, (1,), generator=rng)) if o.synthesis_augment_p > 0 else 0
            # looked up at call time, so a test can count (or interrupt) the batches
            diagnostics: list[Tensor] = []
            x = synthesize_batch(ctx.teacher, bns, x0.to(ctx.device), y.to(ctx.device), o, on_step,
                                 diagnostics=diagnostics, augment_seed=augment_seed).cpu()
            return {"x": x, "y": y, **({"diagnostics": diagnostics[0]} if diagnostics else {})}

        parts = synthesize_parts(cache, batch_sizes(o.num_images, o.synthesis_batch), o.synthesis_iters, make,
                                 lambda size: set_check(size, self.image_shape, ctx.num_classes), ctx.report, "HAST")
        return assemble(parts)
