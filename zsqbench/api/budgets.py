"""Budget presets and the per-method overrides plugins contribute to them.

``registry.toml`` defines the generic presets (``smoke``, ``cpu``, ``paper``, ...). A method whose
schedule differs says so itself, through the ``register_budget_overrides`` hook: AdaDFQ trains at
batch 16 under ``paper``, AKT's code 200 x 200 at batch 200, HAST shrinks its synthesis under
``smoke`` and ``cpu``. An override selects a preset and a generator, a loss or both; see
:func:`zsqbench.grid.budgets.resolve_budget` for how they combine.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BudgetPreset(BaseModel):
    """A named preset of registry.toml: the same numbers for every method unless overridden."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    epochs: int
    iters_per_epoch: int
    batch_size: int
    warmup_epochs: int
    lr_milestones: list[int] = Field(default_factory=list)
    calibration_epochs: int | None = None
    eval_every: int | None = None
    eval_images: int | None = None
    optim: dict[str, Any] = Field(default_factory=dict)
    input_size: int | None = Field(
        None, description="the teacher input size (pixels) the preset is made for; None: any. Trials of teachers "
        "of another size are refused (the ImageNet presets at 224, CIFAR's paper schedule at 32)")


#: The budget fields an override may set (besides ``optim`` and ``generator_options``).
BUDGET_FIELDS = ("epochs", "iters_per_epoch", "batch_size", "warmup_epochs", "lr_milestones",
                 "calibration_epochs", "eval_every", "eval_images")


class BudgetOverride(BaseModel):
    """What a method changes in a preset, for trials of its generator, its loss, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = Field(description="the preset it changes, e.g. 'paper'")
    generator: str | None = Field(None, description="only trials of this generator (None: any)")
    loss: str | None = Field(None, description="only trials with this loss (None: any)")
    epochs: int | None = Field(None, ge=1)
    iters_per_epoch: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    warmup_epochs: int | None = Field(None, ge=1)
    lr_milestones: tuple[int, ...] | None = None
    calibration_epochs: int | None = Field(None, ge=1)
    eval_every: int | None = Field(None, ge=1)
    eval_images: int | None = Field(None, ge=1)
    optim: dict[str, Any] = Field(default_factory=dict, description="student/generator optimizer settings")
    generator_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the generator that scale with the budget (e.g. HAST's synthesis size); "
        "they go into the trial spec, and options a user gives the generator win over them",
    )
    note: str = Field("", description="where the numbers come from (paper, code, measurement)")

    @model_validator(mode="after")
    def _selects_a_method(self) -> "BudgetOverride":
        if self.generator is None and self.loss is None:
            raise ValueError("a budget override must name a generator, a loss or both; "
                             "settings for every method belong in the preset itself (registry.toml)")
        if self.generator_options and self.generator is None:
            raise ValueError("generator_options need the generator they belong to")
        return self

    @property
    def name(self) -> str:
        """The override's key: preset and selection, e.g. ``paper:adadfq+akt`` (``*`` = any)."""
        return f"{self.preset}:{self.generator or '*'}+{self.loss or '*'}"

    @property
    def description(self) -> str:
        return self.note

    def fields(self) -> dict[str, Any]:
        """The budget fields it sets."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k in BUDGET_FIELDS
                if (v := getattr(self, k)) is not None}
