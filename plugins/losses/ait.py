"""AIT, "It's All In the Teacher" (CVPR 2022): a KL-only student loss plus gradient inundation
(docs/methods/ait.md).

* **Loss.** For a generator whose native logit loss is GDFQ's KD + CE form (``NativeLosses.family
  == KD_CE``: GDFQ and its family): κ_kd·T²·KL_mean + κ_ce·CE(student, labels), with the element
  mean (÷B·C) of GDFQ's code, T = 20, κ_kd = 1, κ_ce = 0, i.e. KL only. The CE is not computed
  when κ_ce = 0 (the code computes and discards it). For any other generator (AdaDFQ's entropy
  of the logit difference, HAST's KD with feature alignment) AIT reduces to GI on the generator's
  native objective (docs/methods/ait.md#combining-with-generators [REC]); there are no official
  numbers for those combinations. The loss reads the declared family, never generator names.
* **Optimizer.** :class:`~zsqbench_plugins.losses._gi_sgd.GISGD` replaces the core's SGD
  (:meth:`build_optimizer`) with the trial's LR, momentum, Nesterov and weight decay. The
  threshold decays at ``threshold_milestones``, by default the budget's LR milestones (the code
  decays both at {100, 200, 300}, and short budgets scale both alike, docs/methods/ait.md#budgets); the first
  ``capped_epochs`` training epochs cap a at 2^``capped_doublings``.
* **Weight decay 0.** Every AIT configuration trains without weight decay (docs/methods/ait.md#budgets): the plugin
  contributes budget overrides ``optim.weight_decay = 0`` under the bundled presets (``smoke``,
  ``cpu``, ``paper``); ``paper`` is otherwise AIT's own schedule already (400 x 200 at batch 200,
  warm-up 4, lr 1e-4, milestones {100, 200, 300}). A preset of one's own, or a grid file's
  ``optim``, may set another decay: it is then applied, and (unless ``include_wd``) left out of the
  search direction, so the realized share of changed codes differs from f(a) (T2).
* **Quantizer.** GI counts integer codes, so the quantizer must be a
  :class:`~zsqbench.api.quantizer.WeightCodeQuantizer` (``uniform`` is); another is refused when
  the grid is expanded.

Defaults follow the code (CIFAR run scripts): p₀ = 1e-3, decay 0.1, 5 bisection rounds,
tolerance p/100, final a = the last midpoint, weight decay out of the direction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from zsqbench.api import (
    KD_CE,
    BudgetOverride,
    DistillationLoss,
    LossInputs,
    PluginOptions,
    Quantizer,
    WeightCodeQuantizer,
    hookimpl,
)
from zsqbench.errors import UserError
from zsqbench.toolkit.logits import cross_entropy, kd_kl
from zsqbench_plugins.losses._gi_sgd import GISGD, GISettings
from zsqbench_plugins.losses.cards import AIT_CARD

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench.api.spec import TrialSpec


class AITOptions(PluginOptions):
    temperature: float = Field(20.0, gt=0, description="KD temperature T (GDFQ-family generators)")
    kd_weight: float = Field(1.0, ge=0, description="κ_kd in κ_kd·T²·KL_mean (GDFQ-family generators)")
    ce_weight: float = Field(0.0, ge=0, description="κ_ce, weight of the label CE (0: KL only, as AIT)")
    threshold: float = Field(1e-3, gt=0, le=1, description="p₀: target share of changed weight codes per step "
                             "(CIFAR scripts 1e-3; ImageNet 1e-4)")
    threshold_decay: float = Field(0.1, gt=0, le=1, description="factor on the threshold at each milestone")
    threshold_milestones: list[int] | None = Field(
        None, description="epochs where the threshold decays; None = the budget's LR milestones")
    bisection_rounds: int = Field(5, ge=0, le=8, description="bisection rounds after the doubling")
    tolerance: float = Field(0.01, ge=0, lt=1, description="stop the bisection when |f - p| < tolerance*p")
    final: Literal["midpoint", "upper"] = Field(
        "midpoint", description="'midpoint' = the last bisection midpoint (code; may undershoot p), "
        "'upper' = the bracket's upper end (f >= p guaranteed)")
    include_wd: bool = Field(False, description="include weight decay in the search direction (code: no)")
    capped_epochs: int = Field(1, ge=0, description="first training epochs searched in capped mode (code: 1)")
    capped_doublings: int = Field(7, ge=0, le=40, description="capped mode: a <= 2^this (code: 128, 'a > 100')")
    max_doublings: int = Field(24, ge=0, le=40, description="after capped mode: a <= 2^this (never hangs)")

    @field_validator("threshold_milestones")
    @classmethod
    def _sorted(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (sorted(v) != v or any(m < 0 for m in v)):
            raise ValueError("threshold_milestones must be non-negative epochs in ascending order")
        return v

    @model_validator(mode="after")
    def _caps(self) -> "AITOptions":
        if self.capped_doublings > self.max_doublings:
            raise ValueError(f"capped_doublings ({self.capped_doublings}) must not exceed max_doublings "
                             f"({self.max_doublings})")
        return self


#: AIT trains without weight decay under each bundled preset (docs/methods/ait.md#budgets).
BUDGET_OVERRIDES = tuple(BudgetOverride(preset=preset, loss="ait", optim={"weight_decay": 0.0},
                                        note="AIT trains without weight decay (every AIT hocon: wd 0.0)")
                         for preset in ("smoke", "cpu", "paper"))


class AIT(DistillationLoss):
    name = "ait"
    description = ("AIT: KL-only student loss (T²·KL_mean) + gradient inundation, an SGD whose steps on quantized "
                   "weights are enlarged until a share p of their codes changes")
    Options = AITOptions
    card = AIT_CARD
    budget_overrides = BUDGET_OVERRIDES

    def __init__(self, options, native, teacher) -> None:
        super().__init__(options, native, teacher)
        self.reweights = native.family == KD_CE
        if not self.reweights:  # GI alone, on the generator's own objective (and its taps)
            self.feature_taps = native.objective.feature_taps
            self.feature_weight = native.objective.feature_weight

    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]:
        if not self.reweights:
            return self.native.objective(inputs)
        o: AITOptions = self.options  # type: ignore[assignment]
        total = o.kd_weight * kd_kl(inputs.student_logits, inputs.teacher_logits, o.temperature, "mean")
        if o.ce_weight:
            total = total + o.ce_weight * cross_entropy(inputs.student_logits, inputs.targets)
        return {"total": total, "logit": total}

    @classmethod
    def check_quantizer(cls, quantizer: type[Quantizer]) -> None:
        if not issubclass(quantizer, WeightCodeQuantizer):
            raise UserError(
                f"loss 'ait' needs a quantizer that exposes integer weight codes (a WeightCodeQuantizer with "
                f"quantized_weights and weight_codes); quantizer '{quantizer.name}' does not: use --quantizer uniform "
                "or implement both methods in it"
            )

    def build_optimizer(self, spec: "TrialSpec", student: nn.Module, quantizer: Quantizer) -> torch.optim.Optimizer:
        type(self).check_quantizer(type(quantizer))
        assert isinstance(quantizer, WeightCodeQuantizer)
        o: AITOptions = self.options  # type: ignore[assignment]
        budget = spec.budget
        milestones = budget.lr_milestones if o.threshold_milestones is None else o.threshold_milestones
        settings = GISettings(
            threshold=o.threshold, threshold_decay=o.threshold_decay, threshold_milestones=tuple(milestones),
            bisection_rounds=o.bisection_rounds, tolerance=o.tolerance, final=o.final, include_wd=o.include_wd,
            capped_doublings=o.capped_doublings, max_doublings=o.max_doublings,
            first_uncapped_epoch=budget.warmup_epochs + o.capped_epochs,
        )
        optim = spec.optim
        return GISGD(student.parameters(), quantizer.quantized_weights(student), quantizer, settings,
                     lr=optim.student_lr, momentum=optim.momentum, nesterov=optim.nesterov,
                     weight_decay=optim.weight_decay)


@hookimpl
def register_losses(register) -> None:
    register(AIT)
