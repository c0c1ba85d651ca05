"""Trial specifications: one pydantic model per grid cell, hashed into its trial id.

A spec is complete and concrete: every plugin option is filled in with its default before
hashing, so two commands that mean the same trial get the same id; and it names the teacher
checkpoint, so a trial is never reused with another teacher.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zsqbench.api.budgets import BudgetFields
from zsqbench.api.options import IdFields
from zsqbench.bits import MAX_BITS, MIN_BITS, bits_label


@dataclass(frozen=True)
class Phase:
    """Where an iteration stands: its epoch, and what the epoch does to the student. Made by
    :meth:`zsqbench.api.spec.Budget.phase`, the one place that knows the warm-up length.

    * ``calibrating``: the student's activation ranges are tracked, the student is not updated;
    * ``frozen``: the warm-up after calibration (GDFQ's ImageNet epochs 4-49, IMAGENET.md §4): the
      ranges are frozen and the student is still not updated, while a generator keeps training;
    * neither (``training``): the student is updated with frozen ranges.

    ``frozen`` is never set by a budget whose calibration lasts the whole warm-up (every CIFAR budget).
    """

    epoch: int
    calibrating: bool
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.calibrating and self.frozen:
            raise ValueError("a phase cannot both calibrate and be frozen")

    @property
    def training(self) -> bool:
        """Whether the student is updated in this epoch."""
        return not (self.calibrating or self.frozen)

    @property
    def name(self) -> str:
        """"warmup" or "train", as recorded per epoch in metrics.jsonl and result.json."""
        return "train" if self.training else "warmup"

    @property
    def kind(self) -> str:
        """"calibrating", "frozen" or "training", as messages name the phase."""
        return "calibrating" if self.calibrating else "frozen" if self.frozen else "training"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(BudgetFields, IdFields):
    """How much training a trial gets: the fields of :class:`~zsqbench.api.budgets.BudgetFields`
    (declared there, once, for the partial budgets that set them too). Milestones are epoch
    indices where LRs drop ×0.1.

    ``warmup_epochs`` is how long the student is not updated; the first ``calibration_epochs`` of
    them track its activation ranges, the rest keep them frozen while the generator trains alone
    (GDFQ's ImageNet code: ranges in epochs 0-3, student frozen up to epoch 49; IMAGENET.md §4).
    ``calibration_epochs`` None means the whole warm-up calibrates, as on CIFAR.

    ``warmup_epochs == epochs`` is a post-training-quantization budget (the ``ptq`` preset): the
    student is calibrated and evaluated, never updated. Only generators that declare themselves
    post-training only accept it (:meth:`zsqbench.api.generator.Generator.budget_problem`, checked
    when a grid is expanded and when a trial's parts are built), so it cannot silently skip the
    training of a method that needs it.

    ``eval_every`` and ``eval_images`` thin out evaluation (ImageNet's 50,000 test images cost as
    much as training at every epoch, IMAGENET.md §7.2); :meth:`evaluates` says which epochs.

    ``shared_calibration`` replaces every method's calibration batches with one shared source at that
    batch (:meth:`zsqbench.api.generator.Generator.step`; docs/budgets.md#shared-calibration), so a
    comparison can separate better images from wider ranges.

    The fields that may be None are marked ``OmitAtDefault`` where they are declared: they stay out
    of the dump (and so out of every trial id) while None, so every budget written before they
    existed keeps its id.
    """

    @model_validator(mode="after")
    def _check(self) -> "Budget":
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}): the "
                "warm-up epochs are part of the epochs"
            )
        if self.calibration_epochs is not None and self.calibration_epochs > self.warmup_epochs:
            raise ValueError(
                f"calibration_epochs ({self.calibration_epochs}) must not exceed warmup_epochs "
                f"({self.warmup_epochs}): the student is not updated while its ranges are calibrated"
            )
        if sorted(self.lr_milestones) != self.lr_milestones:
            raise ValueError("lr_milestones must be sorted ascending")
        return self

    def lr_factor(self, epoch: int) -> float:
        """Multi-step decay: at the start of epoch e, 0.1 ** (#milestones <= e)."""
        return 0.1 ** sum(1 for m in self.lr_milestones if m <= epoch)

    @property
    def calibration_length(self) -> int:
        """Epochs that calibrate the activation ranges."""
        return self.warmup_epochs if self.calibration_epochs is None else self.calibration_epochs

    def phase(self, epoch: int) -> Phase:
        """The phase of an epoch: the first ``calibration_length`` calibrate, the rest of the
        warm-up keep the student and its ranges frozen, the others train. The one place that
        decides it; the trainer hands the result to the plugins."""
        calibrating = epoch < self.calibration_length
        return Phase(epoch=epoch, calibrating=calibrating, frozen=not calibrating and epoch < self.warmup_epochs)

    @property
    def trains(self) -> bool:
        """Whether any epoch updates the student (False: a post-training-quantization budget)."""
        return self.epochs > self.warmup_epochs

    @property
    def frozen_epochs(self) -> int:
        """Warm-up epochs after calibration (ranges frozen, student not updated)."""
        return self.warmup_epochs - self.calibration_length

    @property
    def first_training_phase(self) -> Phase:
        return self.phase(self.warmup_epochs)

    @property
    def ptq_epoch(self) -> int:
        """The last calibration epoch: its evaluation is the PTQ accuracy (ranges calibrated, no
        student update yet)."""
        return self.calibration_length - 1

    def evaluates(self, epoch: int) -> bool:
        """Whether the student is evaluated after ``epoch``: the PTQ epoch; then, once the student
        trains, every epoch, or with ``eval_every`` = k every k-th (epoch + 1 divisible by k) and
        the last. Frozen warm-up epochs are skipped: the student is exactly the PTQ epoch's
        (without frozen epochs, and with ``eval_every`` None, every epoch from the PTQ epoch on)."""
        if epoch == self.ptq_epoch:
            return True
        if epoch < self.warmup_epochs:
            return False
        return self.eval_every is None or epoch == self.epochs - 1 or (epoch + 1) % self.eval_every == 0

    @property
    def evaluated_epochs(self) -> int:
        """How many epochs are evaluated (the compute estimate's count)."""
        return sum(1 for e in range(self.epochs) if self.evaluates(e))

    def describe(self) -> str:
        """"400x200x16 (warm-up 4, calibration 2, eval every 5, lr x0.1 at 100,200)": epochs x
        iterations x batch, then what the budget sets beyond them; the one rendering of a schedule."""
        parts = [f"warm-up {self.warmup_epochs}"]
        if self.calibration_epochs is not None:
            parts.append(f"calibration {self.calibration_epochs}")
        if self.eval_every is not None:
            parts.append(f"eval every {self.eval_every}")
        if self.eval_images is not None:
            parts.append(f"eval on {self.eval_images} images")
        if self.shared_calibration is not None:
            parts.append(f"shared calibration at batch {self.shared_calibration}")
        if self.lr_milestones:
            parts.append(f"lr x0.1 at {','.join(str(m) for m in self.lr_milestones)}")
        return f"{self.epochs}x{self.iters_per_epoch}x{self.batch_size} ({', '.join(parts)})"


class OptimSettings(StrictModel):
    """Student SGD and generator Adam settings (docs/methods/common.md#optimizers-and-learning-rate-schedule)."""

    student_lr: float = Field(1e-4, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = True
    weight_decay: float = Field(1e-4, ge=0)
    generator_lr: float = Field(1e-3, gt=0)
    generator_betas: tuple[float, float] = (0.5, 0.999)


class PluginChoice(StrictModel):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class TeacherRef(StrictModel):
    """Which teacher checkpoint a trial uses: a pinned one by its tag and pinned digest, or a
    user's file ("unpinned") by its sha256. Part of the trial id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str
    digest: str = Field(description="'sha256:<hex>' or 'sha1:<hex>' (pytorchcv pins sha1)")

    @property
    def short(self) -> str:
        algorithm, _, value = self.digest.partition(":")
        return f"{self.tag} ({algorithm} {value[:8]})"


class TrialSpec(StrictModel):
    """Everything that determines one trial's numbers (and nothing about where it runs).

    ``teacher`` is None only in specs written before the teacher was part of the trial id;
    such specs keep their old ids (``canonical_json`` leaves the field out), so old results
    folders stay readable.
    """

    model: str
    dataset: str
    generator: PluginChoice
    loss: PluginChoice
    quantizer: PluginChoice = PluginChoice(name="uniform")
    w_bits: int
    a_bits: int
    seed: int = Field(ge=0)
    budget: Budget
    optim: OptimSettings = OptimSettings()
    teacher: TeacherRef | None = None
    budget_name: str = Field("custom", description="label of the preset; not part of the trial id")

    @field_validator("w_bits", "a_bits")
    @classmethod
    def _bits_in_range(cls, v: int) -> int:
        if not MIN_BITS <= v <= MAX_BITS:
            raise ValueError(f"bit-width {v} is outside {MIN_BITS}-{MAX_BITS}")
        return v

    def canonical_json(self) -> str:
        exclude = {"budget_name"} | ({"teacher"} if self.teacher is None else set())
        data = self.model_dump(mode="json", exclude=exclude)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def trial_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @property
    def bits_label(self) -> str:
        return bits_label(self.w_bits, self.a_bits)


def spec_trial_id(spec: dict[str, Any]) -> str:
    """The trial id a recorded spec hashes to (what a reader of result.json passes to
    :func:`zsqbench.runs.result_file.validate_result`): a result whose spec was edited after the trial
    ran, a bit-width changed by hand say, no longer hashes to its folder's name."""
    return TrialSpec.model_validate(spec).trial_id
