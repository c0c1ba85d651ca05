"""The contracts between the core and the plugins.

The core (trainer, runner, CLI) only ever talks to these types; a plugin implements one
of them and registers it through a hook in :mod:`zsqbench.api.hookspecs`. Generators never
know which loss is used and losses never know which generator produced a batch: the
trainer hands each what it declares it needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench.api.features import FeatureTaps
    from zsqbench.trial.spec import TrialSpec


class PluginOptions(BaseModel):
    """Base of every plugin's hyper-parameter model: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(PluginOptions):
    pass


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class PretrainedWeights:
    """One pinned checkpoint of a teacher: where it comes from and what it expects.

    ``filename`` is looked up under ``<data root>/weights/``; ``url`` (with ``sha1`` as in
    pytorchcv's release names) is where a user with internet gets it.
    """

    tag: str
    filename: str
    normalization: Normalization
    expected_top1: float | None
    sha256: str | None = None
    url: str | None = None
    sha1: str | None = None
    archive_member: str | None = None
    note: str = ""


@dataclass(frozen=True)
class TeacherModel:
    """A pretrained FP network registered by a model plugin."""

    name: str
    description: str
    arch: str
    dataset: str
    num_classes: int
    build: Callable[[], nn.Module]
    weights: tuple[PretrainedWeights, ...]
    # Named sets of module paths whose outputs feature losses may tap; "default" is required.
    feature_taps: dict[str, tuple[str, ...]] = field(default_factory=dict)


# ------------------------------------------------------------------------ quantizers


class Quantizer(ABC):
    """Turns a copy of the FP teacher into a fake-quantized student.

    The student must keep the FP module names so feature taps address both networks
    with the same module path.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = NoOptions

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    @abstractmethod
    def quantize(self, model: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
        """Return the student built in place from ``model`` (a private copy)."""

    @abstractmethod
    def set_calibrating(self, student: nn.Module, enabled: bool) -> None:
        """Turn activation-range tracking on (warm-up) or off (frozen ranges)."""


# ---------------------------------------------------------------------------- losses


@dataclass
class LossInputs:
    """Everything a student objective may use for one batch.

    Teacher tensors are detached; student tensors carry the graph to the student weights.
    Feature dicts are keyed by module path and hold only the taps the objective asked for.
    """

    student_logits: Tensor
    teacher_logits: Tensor
    labels: Tensor
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)


class LogitLoss(Protocol):
    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor: ...


class StudentObjective(ABC):
    """A student loss: returns named terms, ``total`` among them (the one to minimize)."""

    #: Module paths whose outputs this objective needs, in teacher and student alike.
    feature_taps: tuple[str, ...] = ()

    @abstractmethod
    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class NativeLosses:
    """What a generator's paper trains the student with.

    ``logit`` is the method's logit term alone (feature losses add to it); ``objective`` is
    the method's complete student loss as published (for HAST it includes its feature term).
    """

    logit: LogitLoss
    objective: StudentObjective


class DistillationLoss(StudentObjective):
    """A loss plugin: built from its options, the generator's native losses and the teacher."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = NoOptions

    def __init__(self, options: PluginOptions, native: NativeLosses, teacher: TeacherModel) -> None:
        self.options = options
        self.native = native
        self.teacher = teacher


# ------------------------------------------------------------------------ generators


@dataclass
class Batch:
    """One batch for the student step.

    ``x`` is detached from the generator. When the generator already ran the teacher on
    ``x`` it passes the (detached) logits and tapped features so the trainer need not
    run the teacher again.

    ``student_logits``/``student_features`` are optional, for a generator whose own step
    already ran the *current* student on exactly these images with the ranges frozen
    (AdaDFQ after warm-up, METHODS §7.6): the student step then reuses that forward
    instead of running a second, identical one. They keep their graph, which also leads
    back through the images into the generator; whoever backpropagates from them must
    restrict the backward to the student's parameters (``backward(inputs=...)``), as
    :func:`zsqbench.trial.train.standard_student_step` does; it also clears them afterwards, so
    the retained generator activations are freed before the next generator step.
    """

    x: Tensor
    y: Tensor
    teacher_logits: Tensor | None = None
    teacher_features: dict[str, Tensor] | None = None
    student_logits: Tensor | None = None
    student_features: dict[str, Tensor] | None = None


@dataclass
class TrainContext:
    """What a generator may use: the networks, the trial settings and helpers."""

    spec: "TrialSpec"
    teacher_entry: TeacherModel
    teacher: nn.Module
    student: nn.Module
    quantizer: Quantizer
    device: torch.device
    cache_dir: Path
    teacher_taps: "FeatureTaps"
    student_taps: "FeatureTaps"
    # Reports the progress of long preparation work: (description, completed, total).
    report: Callable[[str, int, int], None] = lambda desc, done, total: None

    @property
    def num_classes(self) -> int:
        return self.teacher_entry.num_classes

    def teacher_forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher logits and the (detached) tapped features of this very forward."""
        logits = self.teacher(x)
        return logits, self.teacher_taps.take()

    def student_forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student(x)
        return logits, self.student_taps.take()


class Generator(ABC):
    """A source of synthetic batches; may train itself against teacher and student.

    Online generators (GDFQ, AdaDFQ) update a network in :meth:`next_batch`; offline ones
    (HAST) build a dataset in :meth:`prepare` and serve transformed batches from it.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = NoOptions

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        self.options = options
        self.ctx = ctx

    def prepare(self) -> None:
        """Offline work before epoch 0 (e.g. synthesizing a dataset)."""

    def start_epoch(self, epoch: int) -> None:
        """Called at the start of each epoch (learning-rate schedules, phase switches)."""

    @abstractmethod
    def next_batch(self, epoch: int) -> Batch:
        """Produce the next batch, updating the generator if it learns."""

    @abstractmethod
    def native_losses(self) -> NativeLosses:
        """The student losses this method was published with."""

    def student_step(
        self, batch: Batch, objective: StudentObjective, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        """One student update. Methods that change the step itself (HAST) override this."""
        from zsqbench.trial.train import standard_student_step

        return standard_student_step(self.ctx, batch, objective, optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# ------------------------------------------------------------------------- executors


@dataclass(frozen=True)
class TrialJob:
    """One trial to run, in a form that pickles to another process or machine.

    The trial folder already holds ``spec.json``; the job writes ``result.json`` (done) or
    ``error.json`` (failed) there, resuming from ``checkpoint.pt`` if one exists.
    """

    trial_id: str
    trial_dir: str
    label: str
    env: dict[str, Any]  # zsqbench.trial.train.Environment fields as plain values


@dataclass(frozen=True)
class JobOutcome:
    trial_id: str
    status: str  # "done", "failed", "diverged"
    error: str = ""


class Executor(ABC):
    """Runs trial jobs somewhere (this process, one process per GPU, a cluster).

    Executors call :func:`zsqbench.grid.runner.execute_job` for each job wherever it runs and
    report every finished job through ``on_done`` in the coordinating process, which
    alone writes the leaderboard.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = NoOptions

    def __init__(self, options: PluginOptions, max_parallel: int | None = None) -> None:
        self.options = options
        self.max_parallel = max_parallel

    @abstractmethod
    def run(self, jobs: list[TrialJob], on_done: Callable[[TrialJob, JobOutcome], None], progress: Any) -> None: ...
