"""Generators: the data source of a trial, and the parts of its training step.

One iteration of a trial is :meth:`Generator.step`, and its phase branching belongs to the core:
it makes a batch (:meth:`Generator.next_batch`, which may update the generator; every phase),
then calibrates the student's activation ranges on it (calibrating phase), leaves the student
alone (frozen phase) or updates the student (:meth:`Generator.student_step`, by default
:meth:`StudentUpdate.step`; training phase only). A method overrides those parts, not ``step``:
AdaDFQ's ``next_batch`` runs the student inside its generator update and hands that forward on in
the batch (:attr:`Batch.student_logits`), HAST's ``student_step`` is its perturbed double pass.
The trainer passes the :class:`Phase`; no plugin derives it from epoch numbers, and no plugin
changes the trainer's state. Whatever a step does, a student optimizer step in a calibrating or
frozen epoch fails the trial with :class:`PhaseViolation` (``zsqbench.trial.step.iterate``).

Under a budget's ``shared_calibration`` the core's step calibrates the ranges on a
:class:`CalibrationSource` every method of a seed shares, then lets the generator do what it still does
in a calibration iteration (:meth:`Generator.while_shared_calibration`) with the ranges held.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from zsqbench.api.budgets import BudgetOverride
from zsqbench.api.cards import MethodCard
from zsqbench.api.features import FeatureTaps
from zsqbench.api.losses import LossInputs, NativeLosses, StudentObjective
from zsqbench.api.models import TeacherModel
from zsqbench.api.options import NoOptions, PluginOptions
from zsqbench.api.quantizer import Quantizer
from zsqbench.api.spec import Phase, TrialSpec
from zsqbench.errors import UserError


class PhaseViolation(UserError):
    """A student optimizer step in an epoch that does not train the student (calibrating or
    frozen): a plugin broke the phase contract. The trial fails with a one-line message naming
    the generator and the phase; the fix is in the plugin."""


@dataclass
class Batch:
    """One batch for the student. ``x`` is detached from the generator. When the generator
    already ran the teacher on ``x`` it passes the (detached) logits and tapped features, so
    the student step need not run the teacher again.

    ``y`` holds one class per sample. A generator whose samples mix classes (Qimera) also
    passes their label distribution ``y_soft`` (B, C), rows summing to 1, which the student
    objective then fits instead of ``y`` (:attr:`LossInputs.targets`); ``y`` stays for logging.

    A generator whose own update already ran the student on ``x`` (AdaDFQ's zero-sum loss) may
    pass that forward's logits and tapped features *with their graph* in a training phase, where
    the ranges are frozen and the weights not yet updated, so they are exactly what a new student
    forward would give: :meth:`StudentUpdate.step` then reuses them instead of running the student
    again, its backward restricted to the student's parameters (the graph also leads back into
    the generator). The core ignores them in the other phases.
    """

    x: Tensor
    y: Tensor
    teacher_logits: Tensor | None = None
    teacher_features: dict[str, Tensor] | None = None
    y_soft: Tensor | None = None
    student_logits: Tensor | None = None
    student_features: dict[str, Tensor] | None = None


@dataclass
class TrainContext:
    """What a generator may use: the networks, the trial settings and helpers."""

    spec: "TrialSpec"
    teacher_entry: TeacherModel
    teacher: nn.Module
    student: nn.Module
    device: torch.device
    cache_dir: Path
    teacher_taps: FeatureTaps
    student_taps: FeatureTaps
    # Reports the progress of long preparation work: (description, completed, total).
    report: Callable[[str, int, int], None] = lambda desc, done, total: None

    @property
    def num_classes(self) -> int:
        return self.teacher_entry.num_classes

    def teacher_forward(self, x: Tensor, detach_features: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher logits and the tapped features of this very forward. The logits follow the
        caller's grad mode; the features are detached unless the caller needs their graph
        (HAST's input gradient flows through the teacher's features)."""
        logits = self.teacher(x)
        return logits, self.teacher_taps.take(detach=detach_features)

    def student_forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits and tapped features, both with their graph."""
        logits = self.student(x)
        return logits, self.student_taps.take(detach=False)


class StudentUpdate:
    """The student side of one iteration, made by the core and handed to :meth:`Generator.step`:
    the trial's objective and optimizer, and the standard ways to use them."""

    def __init__(self, ctx: TrainContext, objective: StudentObjective, optimizer: torch.optim.Optimizer,
                 quantizer: Quantizer | None = None) -> None:
        self.ctx = ctx
        self.objective = objective
        self.optimizer = optimizer
        self.quantizer = quantizer
        self.parameters = [p for p in ctx.student.parameters() if p.requires_grad]

    def ranges_held(self) -> AbstractContextManager[None]:
        """The student's activation ranges frozen within the block (a shared calibration keeps the
        generator's own student forwards from moving them); nothing without the trial's quantizer."""
        return nullcontext() if self.quantizer is None else self.quantizer.calibrating(self.ctx.student, False)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.ctx.student_forward(x)

    def calibrate(self, x: Tensor) -> None:
        """A student forward that only moves the activation ranges (calibration phase)."""
        with torch.no_grad():
            self.ctx.student(x)
        self.ctx.student_taps.take(detach=True)

    def teacher_outputs(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The batch's teacher outputs, or a no-grad teacher forward when it carries none."""
        if batch.teacher_logits is None:
            with torch.no_grad():
                return self.ctx.teacher_forward(batch.x)
        return batch.teacher_logits, batch.teacher_features or {}

    def step(self, batch: Batch) -> dict[str, Tensor]:
        """The standard update: teacher outputs, student forward (or the batch's own, when it
        carries one: :attr:`Batch.student_logits`), objective, one optimizer step. The batch's
        soft labels, if any, travel with it to the objective."""
        t, t_feats = self.teacher_outputs(batch)
        if batch.student_logits is not None:
            s, s_feats = batch.student_logits, batch.student_features or {}
        else:
            s, s_feats = self.forward(batch.x)
        return self.minimize(LossInputs(s, t, batch.y, s_feats, t_feats, soft_labels=batch.y_soft),
                             shared_graph=batch.student_logits is not None)

    def minimize(self, inputs: LossInputs, *, shared_graph: bool = False) -> dict[str, Tensor]:
        """The objective on ``inputs``, its gradient, one optimizer step; the detached terms.

        ``shared_graph``: the student tensors come from a forward whose graph also leads back
        through the images into the generator (AdaDFQ's shared forward); the backward is then
        restricted to the student's parameters, so the generator gets no gradient and its part
        of the graph is not traversed.
        """
        terms = self.objective(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        if shared_graph:
            terms["total"].backward(inputs=self.parameters)
        else:
            terms["total"].backward()
        self.optimizer.step()
        return {k: v.detach() for k, v in terms.items()}


class CalibrationSource(ABC):
    """The calibration batches of a budget's ``shared_calibration``: one source whose batches depend on
    the teacher, the trial seed and the batch alone, so that every method of a seed calibrates its
    ranges on the same images (:class:`zsqbench.toolkit.online.SharedCalibration` is the bundled one).
    Its state is checkpointed with the generator's."""

    @abstractmethod
    def next_images(self) -> Tensor:
        """The next calibration batch (detached)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class PassCounts:
    """A method's compute per generated sample, in forward-pass equivalents of each network (a
    backward counts as two forwards, weight gradients included), for a grid's compute estimate
    (IMAGENET.md §7.2; :func:`zsqbench.perf.estimate.estimate_compute` multiplies teacher-sized
    passes, teacher and student alike, by the teacher's MACs and generator passes by the
    generator network's). The defaults are GDFQ's: a generator step through the teacher (3G + 3T)
    then a student step (3T: forward and backward, teacher outputs reused); in warm-up iterations
    the student only runs a calibration forward (1T).

    ``warmup_batch``: the batch of warm-up iterations when a separate calibration generator runs
    at its own (HAST, IntraQ); ``synthesis_teacher``: teacher passes of an offline synthesis per
    trial (images × steps × 3), run at large batch; ``generator_macs``: the generator network's
    MACs per image (None: unknown, the estimate assumes GDFQ's CIFAR network).

    The last five fields say *exactly* which network passes one training iteration runs beyond the
    bare iteration of ``zsqbench bench`` (generator forward and backward; teacher forward and its
    input-gradient backward; student forward and its full backward), so that ``bench``'s
    ``bare_method_s`` holds the method's own passes and nothing the harness adds (the rounded
    teacher-pass counts above are estimates and over-count): ``teacher_input_backward`` (False:
    the teacher only runs forward, e.g. fine-tuning on a fixed set), ``student_input_backwards``
    (backwards through the student's forward for the input gradient alone: AdaDFQ's generator
    loss), ``extra_student_forwards`` (further student forwards whose graph serves only those
    input backwards: AdaDFQ's reference order), ``extra_teacher_forwards`` (without graph) and
    ``extra_student_steps`` (student forward + full backward on other inputs: HAST's perturbed pass).
    """

    train_teacher: float = 6.0
    train_generator: float = 3.0
    warmup_teacher: float = 4.0
    warmup_generator: float = 3.0
    warmup_batch: int | None = None
    synthesis_teacher: float = 0.0
    generator_macs: int | None = None
    teacher_input_backward: bool = True
    student_input_backwards: int = 0
    extra_student_forwards: int = 0
    extra_teacher_forwards: int = 0
    extra_student_steps: int = 0

    @property
    def adds_passes(self) -> bool:
        """Whether the training iteration differs from ``bench``'s bare iteration (GDFQ's passes)."""
        return (not self.teacher_input_backward or self.student_input_backwards > 0 or self.extra_student_forwards > 0
                or self.extra_teacher_forwards > 0 or self.extra_student_steps > 0)


class Generator(ABC):
    """A source of synthetic batches that may train itself against teacher and student.

    Online generators (GDFQ, AdaDFQ) update a network every step; offline ones (HAST) build a
    dataset in :meth:`prepare` and serve batches from it. Implement :meth:`next_batch` and, for
    an update other than :meth:`StudentUpdate.step`, :meth:`student_step`; :meth:`step`, which
    calls them as the phase requires, is the core's. Declare trainable networks and their
    optimizers in :meth:`networks` and :meth:`optimizers`: the core applies compute settings
    (memory format, precision, compilation) to those networks and checkpoints both.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = NoOptions
    #: Where the method comes from and what was verified here (``zsqbench plugins NAME``).
    card: ClassVar[MethodCard | None] = None
    #: The method's own budgets: :class:`BudgetOverride`\ s of the presets (its paper schedule, a short
    #: synthesis under ``smoke``), each naming this generator. The plugin manager registers them with the
    #: class, so a method carries its budgets without a second hook; ``register_budget_overrides``
    #: stays for overrides that belong to no one class (e.g. a pairing of a generator and a loss).
    budget_overrides: ClassVar[tuple[BudgetOverride, ...]] = ()
    #: Whether the generator sets :attr:`shared_calibration` from the budget's ``shared_calibration``
    #: (the toolkit's online and offline-set bases do); the others refuse such a budget.
    accepts_shared_calibration: ClassVar[bool] = False

    @classmethod
    def pass_counts(cls, options: PluginOptions, teacher: TeacherModel) -> PassCounts:
        """Network passes per sample for the compute estimate of a grid, for trials on ``teacher``
        (default: GDFQ's counts, generator network unknown)."""
        return PassCounts()

    @classmethod
    def post_training_only(cls, options: PluginOptions) -> bool:
        """Whether trials of this generator (with these options) only calibrate the student:
        post-training quantization (PTQ), no student update ever. Such trials need a budget
        without training epochs (``epochs == warmup_epochs``, the ``ptq`` preset); the
        calibration epoch then serves the method's own set, each image exactly once. A class
        flag or per variant (ZeroQ's ``variant=ptq``)."""
        return False

    @classmethod
    def budget_problem(cls, options: PluginOptions, spec: "TrialSpec") -> str:
        """"" when this generator can run ``spec``'s budget, else the problem and its fix in one
        line (the core raises it as a user error before anything runs). The default pairs
        post-training-only generators with budgets that never train the student, and every other
        generator with budgets that do; a method adds its own rules (ZeroQ: one pass over its set)."""
        b = spec.budget
        if b.shared_calibration is not None and cls.post_training_only(options):
            return (f"generator '{cls.name}' is post-training only: calibrating on its own images is the method, so a "
                    "shared calibration source makes no sense for it; drop --shared-calibration")
        if b.shared_calibration is not None and not cls.accepts_shared_calibration:
            return (f"generator '{cls.name}' cannot calibrate on the shared source (it is built on neither of the "
                    "toolkit's online and offline-set bases); drop --shared-calibration")
        if cls.post_training_only(options) and b.trains:
            return (f"generator '{cls.name}' is post-training only (it never updates the student) but budget "
                    f"'{spec.budget_name}' trains for {b.epochs - b.warmup_epochs} epoch(s) after the warm-up; "
                    "use --budget ptq (or --epochs equal to --warmup-epochs)")
        if not cls.post_training_only(options) and not b.trains:
            return (f"budget '{spec.budget_name}' has no training epochs (epochs = warmup_epochs = {b.epochs}) but "
                    f"generator '{cls.name}' trains the student; use a budget with epochs > warmup_epochs "
                    "(smoke, cpu, paper)")
        return ""

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        self.options = options
        self.ctx = ctx
        #: The budget's shared calibration source, set by a base that accepts one; None: the method's own.
        self.shared_calibration: CalibrationSource | None = None

    # -- the iteration
    def prepare(self) -> None:
        """Offline work before epoch 0 (e.g. synthesizing a dataset)."""

    def start_epoch(self, phase: Phase) -> None:
        """Called at the start of each epoch (learning-rate schedules, phase switches)."""

    def step(self, phase: Phase, student: StudentUpdate) -> dict[str, Tensor]:
        """One iteration, the core's: the batch (every phase), then the phase's use of it; the
        student's detached loss terms (empty unless ``phase.training``).

        Plugins override its parts, not this method. An override owns the order of the
        iteration but not the phases: :func:`zsqbench.trial.step.iterate` fails the trial with
        :class:`PhaseViolation` when a calibrating or frozen iteration steps the student's
        optimizer (the bug of a step that tests ``phase.calibrating`` alone, which trains the
        student in the frozen epochs of the ImageNet budgets).

        Under a shared calibration a calibrating iteration calibrates on the shared source's batch
        first, then runs :meth:`while_shared_calibration` with the ranges held, so that the ranges are
        the same for every method of a seed."""
        if phase.calibrating and self.shared_calibration is not None:
            student.calibrate(self.shared_calibration.next_images())
            with student.ranges_held():
                self.while_shared_calibration(phase)
            return {}
        batch = self.next_batch(phase)
        if phase.calibrating:  # the activation ranges follow the batch
            student.calibrate(batch.x)
            return {}
        if phase.frozen:  # the generator trained in next_batch; the student waits
            return {}
        return self.student_step(batch, phase, student)

    def next_batch(self, phase: Phase) -> Batch:
        """The next batch, updating the generator if it learns; called in every phase. It leaves
        the student's weights alone (its forwards may move the ranges while calibrating)."""
        raise NotImplementedError(f"generator '{self.name}' does not implement next_batch()")

    def while_shared_calibration(self, phase: Phase) -> None:
        """What a calibrating iteration still does under a shared calibration, ranges held: by default
        :meth:`next_batch`, whose batch is dropped (an online generator keeps training as in its own
        calibration epochs); a generator whose calibration batches only serve the ranges does nothing."""
        self.next_batch(phase)

    def student_step(self, batch: Batch, phase: Phase, student: StudentUpdate) -> dict[str, Tensor]:
        """The student update on ``batch``, called in training phases only; its detached loss
        terms, ``total`` among them."""
        return student.step(batch)

    @abstractmethod
    def native_losses(self) -> NativeLosses:
        """The student losses this method was published with."""

    # -- what the core needs to know
    def networks(self) -> dict[str, nn.Module]:
        """The generator's trainable networks by name (none for a fixed dataset)."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers of :meth:`networks`, by name."""
        return {}

    def sample(self, batch_size: int, rng: torch.Generator | None = None) -> Batch | None:
        """A batch as the generator's networks produce it now, without updating anything, for
        analyses and benchmarks; draws its noise from ``rng`` (else the global RNG). ``x`` keeps
        its graph to the networks. None for generators without a network to sample from."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"networks": {k: v.state_dict() for k, v in self.networks().items()},
                "optimizers": {k: v.state_dict() for k, v in self.optimizers().items()},
                **self.shared_calibration_state()}

    def shared_calibration_state(self) -> dict[str, Any]:
        """The shared calibration source's state under its key (nothing without one), for every
        ``state_dict``, the base's and an override's alike."""
        return {} if self.shared_calibration is None else {"shared_calibration": self.shared_calibration.state_dict()}

    def load_shared_calibration_state(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`shared_calibration_state` (a checkpoint without the key leaves the source fresh)."""
        if self.shared_calibration is not None and "shared_calibration" in state:
            self.shared_calibration.load_state_dict(state["shared_calibration"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_shared_calibration_state(state)
        for kind, owned in (("networks", self.networks()), ("optimizers", self.optimizers())):
            saved = state.get(kind, {})
            if set(saved) != set(owned):
                raise ValueError(f"generator '{self.name}': checkpoint holds {kind} {sorted(saved)}, "
                                 f"this generator has {sorted(owned)}")
            for name, obj in owned.items():
                obj.load_state_dict(saved[name])
