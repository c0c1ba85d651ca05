"""Trial specifications: one pydantic model per grid cell, hashed into its trial id.

A spec is complete and concrete: every plugin option is filled in with its default before
hashing, so two commands that mean the same trial get the same id; and it names the teacher
checkpoint, so a trial is never reused with another teacher.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zsqbench.api.generator import Phase
from zsqbench.bits import MAX_BITS, MIN_BITS, bits_label


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(StrictModel):
    """How much training a trial gets. Milestones are epoch indices where LRs drop ×0.1.

    ``warmup_epochs == epochs`` is a post-training-quantization budget (the ``ptq`` preset): the
    student is calibrated and evaluated, never updated. Only generators that declare themselves
    post-training only accept it (:meth:`zsqbench.api.generator.Generator.budget_problem`, checked
    when a grid is expanded and when a trial's parts are built), so it cannot silently skip the
    training of a method that needs it.
    """

    epochs: int = Field(ge=1)
    iters_per_epoch: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    warmup_epochs: int = Field(ge=1, description="epochs of range calibration without student updates")
    lr_milestones: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "Budget":
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}): the "
                "warm-up epochs are part of the epochs"
            )
        if sorted(self.lr_milestones) != self.lr_milestones:
            raise ValueError("lr_milestones must be sorted ascending")
        return self

    def lr_factor(self, epoch: int) -> float:
        """Multi-step decay: at the start of epoch e, 0.1 ** (#milestones <= e)."""
        return 0.1 ** sum(1 for m in self.lr_milestones if m <= epoch)

    def phase(self, epoch: int) -> Phase:
        """The phase of an epoch: the first ``warmup_epochs`` calibrate, the rest train. The one
        place that decides it; the trainer hands the result to the plugins."""
        return Phase(epoch=epoch, calibrating=epoch < self.warmup_epochs)

    @property
    def trains(self) -> bool:
        """Whether any epoch updates the student (False: a post-training-quantization budget)."""
        return self.epochs > self.warmup_epochs

    @property
    def first_training_phase(self) -> Phase:
        return self.phase(self.warmup_epochs)

    @property
    def ptq_epoch(self) -> int:
        """The last calibration epoch: its evaluation is the PTQ accuracy (ranges calibrated, no
        student update yet), and every epoch from it on is evaluated."""
        return self.warmup_epochs - 1


class OptimSettings(StrictModel):
    """Student SGD and generator Adam settings (METHODS §3.3, §4.1)."""

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
