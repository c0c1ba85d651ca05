"""IntraQ (Zhong et al., CVPR 2022): synthetic images with intra-class heterogeneity, then
fine-tuning (docs/methods/intraq.md).

Stage 1 (:meth:`IntraQ.prepare`; :mod:`zsqbench_plugins.generators.intraq_synthesis`): HAST's
skeleton on the shared pixel-synthesis engine (N(0, 1) init, Adam 0.5, plateau 50, 1000
iterations, 5,120 images in batches of 256, the ``batch_mse`` BN loss) with IntraQ's three terms:
local object reinforcement (random resized crops during synthesis), the soft inception loss (a
soft target on p_y for half the images) and the marginal distance constraint (a band of cosine
distance around class centres). Seeded per batch and cached like HAST's set.

Stage 2 is the offline fine-tuning scaffold (:mod:`zsqbench.toolkit.offline`): GDFQ's generator
at batch 16 calibrates the ranges in the warm-up epochs, then batches of the set with random
resized crop + flip and one plain student step each. Native student loss: 8000·KL_batchmean
(α = T = 20) + CE(s, y), with the stored hard labels (IQ10, as the code).

Per-dataset constants of the code (docs/methods/intraq.md#options): ε_SIL 0.95 / 0.6, λ_l 0.05 / 0.02, λ_u 0.8 / 1.0 for
CIFAR-10 / CIFAR-100; other datasets must set them.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field
from torch import Tensor

from zsqbench.api import NativeLosses, PassCounts, PluginOptions, TeacherModel, TrainContext, hookimpl
from zsqbench.errors import UserError
from zsqbench.toolkit.augment import crop_flip
from zsqbench.toolkit.logits import LogitObjective, ScaledKD
from zsqbench.toolkit.offline import (
    OfflineSetGenerator,
    OfflineSetOptions,
    imagenet_overrides,
    paper_fine_tuning_override,
    short_synthesis_overrides,
)
from zsqbench_plugins.generators.cards import INTRAQ_CARD
from zsqbench_plugins.generators.intraq_synthesis import IntraQSet

#: (ε_SIL, λ_l, λ_u) of run_generate_cifar{10,100}.sh.
DATASET_CONSTANTS: dict[str, tuple[float, float, float]] = {"cifar10": (0.95, 0.05, 0.8),
                                                             "cifar100": (0.6, 0.02, 1.0),
                                                             # IMAGENET.md §4.2: targetPro 1, margins 0 / 2
                                                             # (the hinges are inactive)
                                                             "imagenet": (1.0, 0.0, 2.0)}


class IntraQOptions(OfflineSetOptions):
    """Defaults are IntraQ's code for CIFAR (docs/methods/intraq.md#options); None takes the dataset's value."""

    num_images: int = Field(5120, ge=1, description="size of the synthetic set (code: 4 groups x 5 batches x 256)")
    synthesis_batch: int = Field(256, ge=1, description="images optimized jointly (their BN statistics are matched)")
    synthesis_iters: int = Field(1000, ge=1, description="Adam steps per synthesis batch")
    synthesis_lr: float = Field(0.5, gt=0, description="Adam learning rate on the pixels")
    plateau_patience: int = Field(50, ge=0, description="ReduceLROnPlateau patience (iterations)")
    target_pro: float | None = Field(None, ge=0, le=1, description="ε_SIL: soft targets τ ~ U(ε_SIL, 1) "
                                     "(None: 0.95 CIFAR-10, 0.6 CIFAR-100)")
    hard_target_p: float = Field(0.5, ge=0, le=1, description="probability that an image keeps τ = 1")
    margin_lower: float | None = Field(None, ge=0, description="λ_l of MDC (None: 0.05 CIFAR-10, 0.02 CIFAR-100)")
    margin_upper: float | None = Field(None, ge=0, description="λ_u of MDC (None: 0.8 CIFAR-10, 1.0 CIFAR-100)")
    lor_p: float = Field(0.5, ge=0, le=1, description="probability per iteration that the batch is crop-augmented")
    lor_min_area: float = Field(0.5, gt=0, le=1, description="smallest crop area fraction of LOR")
    taps: str = Field("penultimate", description="the model's tap set whose (single) map MDC compares")
    kd_alpha: float = Field(20.0, ge=0, description="α in α·T²·KL_batchmean")
    temperature: float = Field(20.0, gt=0, description="KD temperature T")
    ce_weight: float = Field(1.0, ge=0, description="weight of CE(student, stored label) in the student loss")


def resolve_constants(options: IntraQOptions, dataset: str) -> tuple[float, float, float]:
    """(ε_SIL, λ_l, λ_u): the options where given, else the code's values for the dataset."""
    given = (options.target_pro, options.margin_lower, options.margin_upper)
    if None in given and dataset not in DATASET_CONSTANTS:
        raise UserError(f"IntraQ has no published constants for dataset '{dataset}'; set -o intraq.target_pro=..., "
                        "-o intraq.margin_lower=... and -o intraq.margin_upper=...")
    defaults = DATASET_CONSTANTS.get(dataset, (0.0, 0.0, 0.0))
    eps_sil, lower, upper = (d if g is None else g for g, d in zip(given, defaults))
    if lower > upper:
        raise UserError(f"IntraQ's margin_lower ({lower}) exceeds margin_upper ({upper}); swap them")
    return eps_sil, lower, upper


# IntraQ's fine-tuning (docs/methods/intraq.md#budgets): 151 epochs (4 calibration) at batch 256,
# lr 1e-4 x0.1 at 20/40/60. Smoke and cpu shrink the synthesis as HAST's presets do and train at
# lr 1e-6: with the KD weight 8000 on short syntheses the paper lr trips the divergence guard (IQ8),
# as it did for HAST.
BUDGET_OVERRIDES = (
    *short_synthesis_overrides("intraq", "images", "KD weight 8000"),
    *imagenet_overrides("intraq"),  # ImageNet constants: DATASET_CONSTANTS; LOR crops (0.5, 1) are the default
    paper_fine_tuning_override("intraq", 256, 1e-4,
                               "IntraQ's schedule: 4 calibration + 147 epochs at batch 256, lr 1e-4 "
                               "(docs/methods/intraq.md#budgets)"),
)


class IntraQ(OfflineSetGenerator):
    name = "intraq"
    description = ("IntraQ: pixel synthesis with local object reinforcement, soft inception loss and marginal "
                   "distance constraint; GDFQ-generator calibration, then KD (8000) + CE fine-tuning")
    Options = IntraQOptions
    card = INTRAQ_CARD
    budget_overrides = BUDGET_OVERRIDES
    augment = staticmethod(crop_flip)  # batched on an accelerator

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        o: IntraQOptions = options  # type: ignore[assignment]
        super().__init__(options, ctx, calibration_batch=o.calibration_batch,
                         calibration_bns_weight=o.calibration_bns_weight)
        taps = ctx.teacher_entry.feature_taps.get(o.taps)
        if not taps or len(taps) != 1:
            raise UserError(f"model '{ctx.teacher_entry.name}' has no single-map tap set '{o.taps}' for IntraQ's class "
                            "centres; add one (the pooled features before the classifier) or pass -o intraq.taps=NAME")
        eps_sil, lower, upper = resolve_constants(o, ctx.spec.dataset)
        self.synthetic_set = IntraQSet(ctx, o, eps_sil, lower, upper, taps[0])

    @classmethod
    def pass_counts(cls, options: PluginOptions, teacher: TeacherModel) -> PassCounts:
        """The scaffold's counts (4T per fine-tuning sample) and the synthesis (IMAGENET.md §7.2)."""
        o: IntraQOptions = options  # type: ignore[assignment]
        return replace(super().pass_counts(options, teacher), synthesis_teacher=3.0 * o.num_images * o.synthesis_iters)

    def load_set(self) -> tuple[Tensor, Tensor]:
        x, y = self.synthetic_set.load_or_build()
        checks = self.synthetic_set.records.get("checks")
        if checks is not None:
            acc, gap, active = (v.item() for v in checks.nanmean(dim=0))
            self.ctx.report(f"IntraQ set: teacher top-1 on tau=1 images {100 * acc:.1f}%, mean |p_y - tau| on soft "
                            f"ones {gap:.3f}, active MDC hinges {100 * active:.1f}%", len(y), len(y))
        return x, y

    def native_losses(self) -> NativeLosses:
        o: IntraQOptions = self.options  # type: ignore[assignment]
        logit = ScaledKD(o.kd_alpha, o.temperature, o.ce_weight)
        return NativeLosses(logit=logit, objective=LogitObjective(logit))


@hookimpl
def register_generators(register) -> None:
    register(IntraQ)

