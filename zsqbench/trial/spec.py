"""Trial specifications: one pydantic model per grid cell, hashed into its trial id.

A spec is complete and concrete: every plugin option is filled in with its default
before hashing, so two commands that mean the same trial get the same id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zsqbench.errors import UserError

MIN_BITS, MAX_BITS = 2, 8


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(StrictModel):
    """How much training a trial gets. Milestones are epoch indices where LRs drop ×0.1."""

    epochs: int = Field(ge=1)
    iters_per_epoch: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    warmup_epochs: int = Field(ge=1, description="epochs of range calibration without student updates")
    lr_milestones: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "Budget":
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs}), "
                "otherwise the student is never trained"
            )
        if sorted(self.lr_milestones) != self.lr_milestones:
            raise ValueError("lr_milestones must be sorted ascending")
        return self

    def lr_factor(self, epoch: int) -> float:
        """Multi-step decay: at the start of epoch e, 0.1 ** (#milestones <= e)."""
        return 0.1 ** sum(1 for m in self.lr_milestones if m <= epoch)


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


class TrialSpec(StrictModel):
    """Everything that determines one trial's numbers (and nothing about where it runs)."""

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
    budget_name: str = Field("custom", description="label of the preset; not part of the trial id")

    @field_validator("w_bits", "a_bits")
    @classmethod
    def _bits_in_range(cls, v: int) -> int:
        if not MIN_BITS <= v <= MAX_BITS:
            raise ValueError(f"bit-width {v} is outside {MIN_BITS}-{MAX_BITS}")
        return v

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json", exclude={"budget_name"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def trial_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @property
    def bits_label(self) -> str:
        return f"w{self.w_bits}a{self.a_bits}"


def parse_bits(text: str) -> list[tuple[int, int]]:
    """'3,4,5' -> [(3,3),(4,4),(5,5)]; '4/8' -> [(4,8)] (weights/activations)."""
    pairs: list[tuple[int, int]] = []
    for item in (p.strip() for p in str(text).split(",")):
        if not item:
            continue
        parts = item.split("/")
        try:
            if len(parts) == 1:
                w = a = int(parts[0])
            elif len(parts) == 2:
                w, a = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        except ValueError:
            raise UserError(
                f"bad bit-width '{item}': use integers like '3,4,5' (wXaX) or '4/8' (w4a8)"
            ) from None
        for b in (w, a):
            if not MIN_BITS <= b <= MAX_BITS:
                raise UserError(
                    f"bad bit-width '{item}': bits must be between {MIN_BITS} and {MAX_BITS}"
                )
        pairs.append((w, a))
    if not pairs:
        raise UserError("no bit-width given: pass e.g. --bits 3,4,5")
    return pairs
