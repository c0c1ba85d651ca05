"""Student objectives: what the student minimizes, and what a loss plugin is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from torch import Tensor, nn

from zsqbench.api.budgets import BudgetOverride
from zsqbench.api.cards import MethodCard
from zsqbench.api.models import TeacherModel
from zsqbench.api.options import NoOptions, PluginOptions
from zsqbench.api.quantizer import Quantizer

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench.api.spec import TrialSpec

#: :attr:`NativeLosses.family` of GDFQ's form and its descendants: ``logit`` is
#: α·T²·KL(teacher ‖ student) plus κ·CE on the batch labels, so a loss that re-weights KD and CE
#: (AIT: κ_kd·T²·KL_mean + κ_ce·CE) may substitute its own weights for the generator's.
KD_CE = "kd+ce"


@dataclass
class LossInputs:
    """Everything a student objective may use for one batch.

    Teacher tensors are detached unless a method asks for the teacher's graph (HAST's input
    gradient); student tensors carry the graph to the student weights. Feature dicts are keyed
    by module path and hold only the taps the objective asked for.

    ``labels`` are hard class indices (B,) (for a generator that mixes classes, one class per
    sample, for logging); ``soft_labels`` is the (B, C) label distribution of a generator that
    makes one (Qimera's superposed classes, rows summing to 1), else None. A label-dependent
    logit term reads :attr:`targets`, the soft labels where they exist.
    """

    student_logits: Tensor
    teacher_logits: Tensor
    labels: Tensor
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    soft_labels: Tensor | None = None

    @property
    def targets(self) -> Tensor:
        """What a label term should fit: ``soft_labels`` (B, C) when the batch has them, else
        ``labels`` (B,). This is the third argument objectives pass to a :class:`LogitLoss`."""
        return self.labels if self.soft_labels is None else self.soft_labels


class LogitLoss(Protocol):
    """A logit loss ``(student_logits, teacher_logits, labels) -> scalar``.

    ``labels`` is :attr:`LossInputs.targets`: class indices (B,) int64, or a (B, C) label
    distribution when the generator made soft labels. A loss with a label term must accept
    both (``zsqbench.toolkit.logits.cross_entropy`` does); one without ignores it. The
    signature stays three positional arguments so that every existing logit loss keeps working
    unchanged: only the objectives that call one pass ``targets`` instead of ``labels``.
    """

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor: ...


class StudentObjective(ABC):
    """A student loss: returns named terms, ``total`` among them (the one to minimize).

    ``feature_taps``: module paths whose outputs this objective needs, in teacher and student
    alike. ``feature_weight``: the weight of its feature term in ``total`` (0 for a logit-only
    objective); the trainer warns when a weighted feature term is exactly 0 for a whole epoch,
    the signature of broken taps or pairing.
    """

    feature_taps: tuple[str, ...] = ()
    feature_weight: float = 0.0

    @abstractmethod
    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class NativeLosses:
    """What a generator's paper trains the student with.

    ``logit`` is the method's logit term alone (feature losses add to it); ``objective`` is
    the method's complete student loss as published (for HAST it includes its feature term).
    ``family`` names the form of ``logit`` when it is a standard one that a loss may re-weight
    (:data:`KD_CE`: GDFQ), and is None for a method-specific form (AdaDFQ's entropy of the logit
    difference, HAST's KD with feature alignment). A loss reads it instead of generator names, so
    a new generator of the GDFQ family gets the same treatment by declaring it.
    """

    logit: LogitLoss
    objective: StudentObjective
    family: str | None = None


class DistillationLoss(StudentObjective):
    """A loss plugin: built from its options, the generator's native losses and the teacher."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = NoOptions
    #: Where the method comes from and what was verified here (``zsqbench plugins NAME``).
    card: ClassVar[MethodCard | None] = None
    #: The method's own budgets: :class:`BudgetOverride`\ s of the presets (its paper schedule, a short
    #: synthesis under ``smoke``), each naming this loss. The plugin manager registers them with the
    #: class, so a method carries its budgets without a second hook; ``register_budget_overrides``
    #: stays for overrides that belong to no one class (e.g. a pairing of a generator and a loss).
    budget_overrides: ClassVar[tuple[BudgetOverride, ...]] = ()

    def __init__(self, options: PluginOptions, native: NativeLosses, teacher: TeacherModel) -> None:
        self.options = options
        self.native = native
        self.teacher = teacher

    @classmethod
    def check_quantizer(cls, quantizer: type[Quantizer]) -> None:
        """Refuse a quantizer this loss cannot work with by raising
        :class:`zsqbench.errors.UserError` (one line naming the fix). Called when a grid is
        expanded, before anything runs; the default accepts every quantizer."""

    def build_optimizer(self, spec: "TrialSpec", student: nn.Module,
                        quantizer: Quantizer) -> torch.optim.Optimizer | None:
        """The student optimizer of a trial with this loss, or None for the core's (SGD with
        ``spec.optim``'s momentum, Nesterov and weight decay over ``student.parameters()``).

        A loss whose method changes the update rule (AIT's gradient inundation) returns its own,
        over every trainable student parameter. The core sets each param group's ``lr`` at every
        epoch start; an optimizer with epoch-dependent state of its own subclasses
        :class:`zsqbench.api.optimizers.EpochAwareOptimizer`.
        """
        return None
