"""Budgets as they are written: the fields of a budget, declared once, and the partial budgets that
set them.

A trial's :class:`~zsqbench.api.spec.Budget` has the fields of :class:`BudgetFields` and checks how
they fit together. Everything that changes a budget is a :class:`PartialBudget`, those fields with the
same limits, each optional (None: left to the layers below): a preset of ``registry.toml``
(:class:`BudgetPreset`); an override a method contributes through the ``register_budget_overrides``
hook (:class:`BudgetOverride`: AdaDFQ trains at batch 16 under ``paper``, AKT's code 200 x 200 at
batch 200, HAST shrinks its synthesis under ``smoke`` and ``cpu``); a grid file's
``budget_overrides`` table; the flags of ``zsqbench run`` (one per field, ``--epochs`` ...).
:func:`zsqbench.grid.budgets.resolve_budget` stacks them in that order, the later winning field by
field. A new budget field is declared here, once: the layers, the flags and the dry run follow.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo

from zsqbench.api.options import OmitAtDefault

#: How a trial's budget name says that every method calibrated on the shared source ("cpu+shared-cal64"):
#: the leaderboard views show such a name even where it does not vary.
SHARED_CALIBRATION_LABEL = "+shared-cal"


class BudgetFields(BaseModel):
    """How much training a trial gets, as numbers. Each description completes "override the
    preset's ...", the help of the field's ``zsqbench run`` flag."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(ge=1, description="epochs (the warm-up included)")
    iters_per_epoch: int = Field(ge=1, description="iterations per epoch")
    batch_size: int = Field(ge=1, description="batch size")
    warmup_epochs: int = Field(ge=1, description="warm-up epochs (student not updated; the first calibrate the ranges)")
    lr_milestones: list[int] = Field(
        default_factory=list, description="LR milestones: epochs at whose start the learning rates drop x0.1 "
        "(comma-separated, ascending; '' for none)")
    # added after the first trials: while unset they stay out of trial ids, which stay as they were
    calibration_epochs: Annotated[int | None, OmitAtDefault()] = Field(
        None, ge=1, description="range-calibration epochs (at most the warm-up; default: all of it)")
    eval_every: Annotated[int | None, OmitAtDefault()] = Field(
        None, ge=1, description="evaluation cadence: every k-th epoch (+ PTQ and last) instead of every epoch")
    eval_images: Annotated[int | None, OmitAtDefault()] = Field(
        None, ge=1, description="evaluation set: the first n test images only (default: all)")
    shared_calibration: Annotated[int | None, OmitAtDefault()] = Field(
        None, ge=1, description="shared calibration batch: every method calibrates its activation ranges on the same "
        "source, a GDFQ-style generator at this batch seeded by the trial seed alone (default: none, each method's "
        "own source and batch)")


def _all_optional(model: type[BaseModel]) -> type[BaseModel]:
    """``model``'s fields, each optional with default None, their types, limits and descriptions kept."""

    def optional(field: FieldInfo) -> tuple[Any, FieldInfo]:
        annotation: Any = Optional[field.annotation]
        if field.metadata:  # the limits (ge=1)
            annotation = Annotated[(annotation, *field.metadata)]
        return annotation, Field(None, description=field.description, json_schema_extra=field.json_schema_extra)

    fields: dict[str, Any] = {name: optional(f) for name, f in model.model_fields.items()}
    return create_model(f"_Optional{model.__name__}", __module__=__name__, **fields)


class PartialBudget(_all_optional(BudgetFields)):  # type: ignore[misc]
    """Some of a budget's fields: one layer of a trial's budget (a preset, a method's override, a grid
    file's ``budget_overrides``, the flags). Unset fields (None) are left to the layers below."""

    model_config = ConfigDict(extra="forbid")

    def fields(self) -> dict[str, Any]:
        """The budget fields this layer sets."""
        return {name: value for name in BudgetFields.model_fields if (value := getattr(self, name)) is not None}


class BudgetPreset(PartialBudget):
    """A named preset of registry.toml: the same numbers for every method unless overridden. It
    sets every field a budget requires, so that a method without overrides has a whole budget."""

    description: str = ""
    optim: dict[str, Any] = Field(default_factory=dict)
    input_size: int | None = Field(
        None, description="the teacher input size (pixels) the preset is made for; None: any. Trials of teachers "
        "of another size are refused (the ImageNet presets at 224, CIFAR's paper schedule at 32)")

    @model_validator(mode="after")
    def _whole(self) -> "BudgetPreset":
        missing = [name for name, f in BudgetFields.model_fields.items() if f.is_required() and name not in self.fields()]
        if missing:
            raise ValueError(f"a preset sets every required budget field; add {', '.join(missing)}")
        return self


class BudgetOverride(PartialBudget):
    """What a method changes in a preset, for trials of its generator, its loss, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = Field(description="the preset it changes, e.g. 'paper'")
    generator: str | None = Field(None, description="only trials of this generator (None: any)")
    loss: str | None = Field(None, description="only trials with this loss (None: any)")
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
