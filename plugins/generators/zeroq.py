"""ZeroQ (Cai et al., CVPR 2020): "distilled data" from the teacher's BN statistics
(docs/methods/zeroq.md), as post-training quantization or as a data generator for
fine-tuning (docs/methods/zeroq.md#variants).

Synthesis (:meth:`ZeroQ.prepare`, the shared engine of :mod:`zsqbench.toolkit.synthesis`): pixels
start from the code's tiny uniform noise (``init=code``; the paper's N(0,1) with ``init=paper``)
and Adam (lr 0.5, plateau patience 100) minimizes the ``zeroq`` member of the BN-loss family:
per-image means and stds (unbiased + 1e-6) of every BN input against the running statistics,
summed over channels and layers, plus the input term (each image towards mean 0, std 1), for 500
iterations. No labels, no classification term, no clipping. Every term involves one image, so
the batch size barely matters (docs/methods/zeroq.md#distilled-data). The set is seeded per
batch and cached like HAST's.

Variants (``variant``):

* ``ptq``: ZeroQ as published. One distilled batch of 32; the trial's only epoch is a calibration
  epoch that feeds it to the student once, in order, no augmentation (``--budget ptq``: the
  generator is post-training only, so a budget with training epochs is refused). With one batch the
  ``exact`` range tracking equals ZeroQ's running min/max
  (docs/methods/uniform.md#range-estimators-for-post-training-quantization); over several batches
  use ``-o uniform.range_tracking=minmax`` (required).
* ``ft`` (default): "ZeroQ + FT" of the later papers: 5,120 images in batches of 256, then the
  offline fine-tuning scaffold (:mod:`zsqbench.toolkit.offline`) at IntraQ's settings; student loss
  KD only (α·T²·KL_batchmean, 8000). Its calibration epochs run on the scaffold's GDFQ-style generator
  (``calibration=generator``, IntraQ's pipeline), or on the distilled set itself
  (``calibration=distilled``: ZeroQ's own calibration, ``calibration_batch`` images at a time, in
  order, not augmented; docs/methods/zeroq.md#calibration-source).
* ``il_ft``: "ZeroQ + IL + FT": as ``ft`` plus CE(T(x), y) against random labels during synthesis,
  and KD + CE during fine-tuning.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torch.nn import functional as F

from zsqbench.api import (
    Batch,
    BudgetOverride,
    NativeLosses,
    OmitAtDefault,
    PassCounts,
    Phase,
    PluginOptions,
    TeacherModel,
    TrainContext,
    hookimpl,
)
from zsqbench.toolkit.augment import crop_flip
from zsqbench.toolkit.bn_stats import ZEROQ, BNStatsLoss
from zsqbench.toolkit.logits import LogitObjective, ScaledKD
from zsqbench.toolkit.offline import (
    OfflineSetGenerator,
    OfflineSetOptions,
    paper_fine_tuning_override,
    short_synthesis_overrides,
)
from zsqbench.toolkit.synthesis import PixelSchedule, PixelSet, bn_term, diagnostics_tensor, optimize_pixels
from zsqbench_plugins.generators.cards import ZEROQ_CARD

#: ZeroQ's init: integers U{0..254} minus 127.5, divided by 5418.75 (the variance, not the std: ZQ1).
CODE_INIT_CENTER, CODE_INIT_SCALE = 127.5, 5418.75
#: Images and batch of the published PTQ (one batch of 32) and of the fine-tuning variants
#: (docs/methods/zeroq.md#variants).
PTQ_SET, FT_SET = (32, 32), (5120, 256)


class ZeroQOptions(OfflineSetOptions):
    """Defaults are ZeroQ's code and, for fine-tuning, IntraQ's pipeline (docs/methods/zeroq.md#options)."""

    variant: Literal["ptq", "ft", "il_ft"] = Field(
        "ft", description="'ptq' = calibrate on the distilled batch only (use --budget ptq); 'ft' = ZeroQ + "
        "fine-tuning (KD); 'il_ft' = + inception loss (CE to random labels) in synthesis and CE in fine-tuning"
    )
    num_images: int | None = Field(None, ge=1, description="distilled images (None: 32 for ptq, 5120 otherwise)")
    synthesis_batch: int | None = Field(None, ge=1, description="images per synthesis batch (None: 32 for ptq, 256)")
    synthesis_iters: int = Field(500, ge=1, description="Adam steps per synthesis batch")
    synthesis_lr: float = Field(0.5, gt=0, description="Adam learning rate on the pixels")
    plateau_patience: int = Field(100, ge=0, description="ReduceLROnPlateau patience (iterations)")
    init: Literal["code", "paper"] = Field(
        "code", description="'code' = (U{0..254} - 127.5) / 5418.75 (std 0.0136); 'paper' = N(0, 1)"
    )
    kd_alpha: float = Field(20.0, ge=0, description="α in α·T²·KL_batchmean (fine-tuning)")
    temperature: float = Field(20.0, gt=0, description="KD temperature T (fine-tuning)")
    # added after the first trials: at its default it stays out of the trial id
    calibration: Annotated[Literal["generator", "distilled"], OmitAtDefault()] = Field(
        "generator", description="what ft / il_ft calibrate the ranges on: 'generator' = the scaffold's GDFQ-style "
        "generator at calibration_batch (IntraQ's pipeline); 'distilled' = the distilled set, calibration_batch "
        "images at a time, in order, not augmented (ZeroQ's own calibration)"
    )

    @model_validator(mode="after")
    def _calibration_of_a_fine_tuning_variant(self) -> "ZeroQOptions":
        if self.variant == "ptq" and self.calibration != "generator":
            raise ValueError("variant=ptq always calibrates on the distilled set; 'calibration' chooses the source "
                             "of the fine-tuning variants (ft, il_ft): leave it out")
        return self

    def set_size(self) -> tuple[int, int]:
        """(images, synthesis batch), the variant's defaults where not given."""
        count, batch = PTQ_SET if self.variant == "ptq" else FT_SET
        return (self.num_images or count, self.synthesis_batch or batch)


def zeroq_init(size: int, shape: tuple[int, ...], rng: torch.Generator, init: str) -> Tensor:
    """The starting pixels: the code's tiny uniform noise (range ±0.0235) or the paper's N(0, 1)."""
    if init == "paper":
        return torch.randn((size, *shape), generator=rng)
    ints = torch.randint(0, 255, (size, *shape), generator=rng).float()
    return (ints - CODE_INIT_CENTER) / CODE_INIT_SCALE


class DistilledSet(PixelSet):
    """ZeroQ's distilled data: the ``zeroq`` BN loss (and for ``il_ft`` the CE to random labels).
    Labels: the random ones for ``il_ft``, else the teacher's argmax on the final image (ZeroQ has
    none; KD does not use them)."""

    label = "ZeroQ"
    folder = "zeroq"

    def __init__(self, ctx: TrainContext, options: ZeroQOptions) -> None:
        count, batch = options.set_size()
        seed = options.seed_for(ctx.spec.seed)
        super().__init__(ctx, count, batch, options.synthesis_iters, seed)
        self.options = options
        self.inception = options.variant == "il_ft"
        self.terms = ["bn", "ce", "total"] if self.inception else ["bn", "total"]
        self.schedule = PixelSchedule(iters=options.synthesis_iters, lr=options.synthesis_lr,
                                      patience=options.plateau_patience)
        self.bns = BNStatsLoss(ctx.teacher, ZEROQ)

    def method_settings(self) -> dict[str, Any]:
        return {"loss": "zeroq" + ("+ce" if self.inception else ""), "init": self.options.init,
                "lr": self.schedule.lr, "plateau": self.schedule.plateau()}

    def make_batch(self, index: int, size: int, rng: torch.Generator, on_step) -> dict[str, Tensor]:
        ctx = self.ctx
        y = torch.randint(0, ctx.num_classes, (size,), generator=rng)
        x0 = zeroq_init(size, self.image_shape, rng, self.options.init)
        y_dev = y.to(ctx.device)
        terms = {"bn": bn_term}
        if self.inception:
            terms["ce"] = lambda view: F.cross_entropy(view.logits, y_dev)
        done = optimize_pixels(ctx.teacher, x0.to(ctx.device), terms, self.schedule, self.bns, labels=y_dev,
                               on_step=on_step)
        if not self.inception:
            with torch.no_grad():
                y = ctx.teacher(done.x).argmax(dim=1).cpu()
        return {"x": done.x.cpu(), "y": y, "diagnostics": diagnostics_tensor(done, self.terms)}


def class_histogram(labels: Tensor, num_classes: int) -> list[int]:
    """The teacher's class counts on the set (a diagnostic; ZeroQ's images carry no labels)."""
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


# The fine-tuning variants share IntraQ's pipeline (docs/methods/zeroq.md#budgets): 151 epochs at
# batch 256, lr 1e-4 x0.1 at 20/40/60, after a 5,120-image synthesis. Its KD weight is 8000, like
# HAST's; on the short syntheses of smoke and cpu the student lr is 1e-6, the value that kept HAST
# stable there.
BUDGET_OVERRIDES = (
    BudgetOverride(preset="ptq", generator="zeroq", generator_options={"variant": "ptq"},
                   note="ZeroQ as published: one distilled batch of 32, fed once for calibration "
                        "(docs/methods/zeroq.md#post-training-only-trials)"),
    *short_synthesis_overrides("zeroq", "distilled images", "KD weight 8000"),
    paper_fine_tuning_override("zeroq", 256, 1e-4,
                               "ZeroQ + FT on IntraQ's pipeline: 4 calibration + 147 epochs at batch 256, lr 1e-4 "
                               "(docs/methods/zeroq.md#budgets)"),
)


class ZeroQ(OfflineSetGenerator):
    name = "zeroq"
    description = ("ZeroQ: distilled data from per-image BN statistics; variant ptq (calibration only, "
                   "--budget ptq), ft (+ IntraQ-style fine-tuning, KD) or il_ft (+ inception loss, KD + CE)")
    Options = ZeroQOptions
    card = ZEROQ_CARD
    budget_overrides = BUDGET_OVERRIDES
    augment = staticmethod(crop_flip)  # batched on an accelerator

    @classmethod
    def post_training_only(cls, options: PluginOptions) -> bool:
        return options.variant == "ptq"  # type: ignore[attr-defined]

    @classmethod
    def budget_problem(cls, options: PluginOptions, spec: Any) -> str:
        o: ZeroQOptions = options  # type: ignore[assignment]
        b = spec.budget
        if o.variant == "ptq" and b.trains:
            return (f"zeroq variant=ptq only calibrates (post-training quantization) but budget '{spec.budget_name}' "
                    f"trains for {b.epochs - b.warmup_epochs} epoch(s) after the warm-up; use --budget ptq, or "
                    "-o zeroq.variant=ft to fine-tune on the distilled data")
        if o.calibration == "distilled" and b.shared_calibration is not None:
            return ("zeroq calibration=distilled and --shared-calibration both choose the calibration source; "
                    "give one of them")
        problem = super().budget_problem(options, spec)
        if problem or o.variant != "ptq":
            return problem
        count = o.set_size()[0]
        needed = math.ceil(count / b.batch_size)
        if b.iters_per_epoch * b.epochs != needed:
            return (f"zeroq variant=ptq feeds each of its {count} images exactly once, which at batch {b.batch_size} "
                    f"takes {needed} iteration(s), but the budget asks for {b.iters_per_epoch * b.epochs}; pass "
                    f"--epochs 1 --warmup-epochs 1 --iters-per-epoch {needed}")
        if needed > 1 and spec.quantizer.options.get("range_tracking") == "exact":
            return (f"zeroq variant=ptq calibrates on {needed} batches, over which range_tracking=exact inflates the "
                    "ranges; pass -o uniform.range_tracking=minmax (ZeroQ's running min/max)")
        return ""

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        o: ZeroQOptions = options  # type: ignore[assignment]
        # PTQ, and the fine-tuning variants with calibration=distilled, calibrate on the distilled set itself;
        # by default the fine-tuning variants on GDFQ's generator (docs/methods/common.md#offline-fine-tuning-scaffold)
        on_set = o.variant == "ptq" or o.calibration == "distilled"
        super().__init__(options, ctx, calibration_batch=None if on_set else o.calibration_batch,
                         calibration_bns_weight=o.calibration_bns_weight)
        self.distilled = DistilledSet(ctx, o)
        self.histogram: list[int] = []
        self._calibration_pos = 0  # calibration=distilled: the next image of the set to calibrate on

    @classmethod
    def pass_counts(cls, options: PluginOptions, teacher: TeacherModel) -> PassCounts:
        """The distillation (images x steps x 3T); ptq: one calibration forward per image, nothing
        else; ft / il_ft: the offline scaffold's calibration generator, then 4T per fine-tuning sample."""
        o: ZeroQOptions = options  # type: ignore[assignment]
        count, _ = o.set_size()
        synthesis = 3.0 * count * o.synthesis_iters
        if o.variant == "ptq":
            return PassCounts(train_teacher=0.0, train_generator=0.0, warmup_teacher=1.0, warmup_generator=0.0,
                              synthesis_teacher=synthesis)
        counts = replace(super().pass_counts(options, teacher), synthesis_teacher=synthesis)
        if o.calibration == "distilled":  # one student forward per calibration image, no generator
            counts = replace(counts, warmup_teacher=1.0, warmup_generator=0.0)
        return counts

    def load_set(self) -> tuple[Tensor, Tensor]:
        x, y = self.distilled.load_or_build()
        self.histogram = class_histogram(y, self.ctx.num_classes)
        self.ctx.report(f"ZeroQ set: teacher classes {self.histogram}", len(y), len(y))
        return x, y

    def next_batch(self, phase: Phase) -> Batch:
        o: ZeroQOptions = self.options  # type: ignore[assignment]
        if o.variant != "ptq" and phase.calibrating and o.calibration == "distilled":
            return self._distilled_calibration_batch(o.calibration_batch)
        if o.variant != "ptq":
            return super().next_batch(phase)
        if not phase.calibrating:
            raise RuntimeError("zeroq variant=ptq never trains the student; its budget must have no training epochs")
        images, labels = self._set()
        start, n = self._pos, images.shape[0]
        if start >= n:
            raise RuntimeError(f"zeroq variant=ptq: a calibration batch was requested after all {n} distilled images "
                               "were fed once; iters_per_epoch must be ceil(images / batch)")
        end = min(n, start + self.ctx.spec.budget.batch_size)
        self._pos = end
        return Batch(x=images[start:end], y=labels[start:end])  # in order, exactly once, not augmented

    def _distilled_calibration_batch(self, size: int) -> Batch:
        """The next ``size`` distilled images in order, wrapping around the set; not augmented (ZeroQ
        calibrates on its images as they are). A position of its own, apart from the training batches'
        shuffled passes, which start afresh when training starts."""
        images, labels = self._set()
        idx = (torch.arange(size) + self._calibration_pos) % images.shape[0]
        self._calibration_pos = int(idx[-1]) + 1
        idx = idx.to(images.device)
        return Batch(x=images[idx], y=labels[idx])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "calibration_pos": self._calibration_pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._calibration_pos = int(state.get("calibration_pos", 0))

    def native_losses(self) -> NativeLosses:
        o: ZeroQOptions = self.options  # type: ignore[assignment]
        logit = ScaledKD(o.kd_alpha, o.temperature, ce_weight=1.0 if o.variant == "il_ft" else 0.0)
        return NativeLosses(logit=logit, objective=LogitObjective(logit))


@hookimpl
def register_generators(register) -> None:
    register(ZeroQ)

